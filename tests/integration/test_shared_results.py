"""Issue 10 item 12: what one worker computes and another reuses lives in the artifact bucket, not on a worker's
disk, and a cached result whose files are gone is a miss (recomputed), never an error or a stale hit.

The values that cross workers are S3 objects with explicit paths: the run's ``manifest.csv``, each backbone's
``result.json`` (how ``train-all`` collects a dispatched run), the registered model folders, and — for container
work pools, whose job templates set ``SCENE_FEATURE_CACHE=s3://<artifact bucket>/features/`` — the feature cache.
No task uses Prefect's result cache (every task is ``NO_CACHE``: tests/test_task_policy.py), so there is no
Prefect cache record that could outlive its files."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest

from scene.data import storage
from scene.data.synth import make_synthetic
from scene.train import features
from tests.support.s3io import upload

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _extract(rows: pd.DataFrame, cache: features.FeatureCache, s3: Any) -> features.ExtractStats:
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D()])
    return features.extract(rows, [0], backbone="mobilenetv2", weights=None, size=32,  # type: ignore[arg-type]
                            cache=cache, batch_size=2, shard_size=2, s3=s3, model=model)


def _uploaded(s3: Any, env: dict[str, str], tmp_path: Path, *, per_class: int, seed: int) -> tuple[pd.DataFrame, str]:
    """Generated 32-px images uploaded to a fresh data prefix, as manifest rows (key, sha256), and a fresh S3 feature
    cache root."""
    root = make_synthetic(tmp_path / "d", per_class, size=32, seed=seed)
    data = upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}shared-{uuid.uuid4().hex[:6]}/")
    files = sorted(root.rglob("*.jpg"))
    rows = pd.DataFrame({"key": [data + f.relative_to(root).as_posix() for f in files],
                         "sha256": [storage.sha256_file(f) for f in files]})
    return rows, f"s3://{env['SCENE_ARTIFACT_BUCKET']}/features-{uuid.uuid4().hex[:8]}/"


def test_an_s3_feature_cache_serves_another_worker_and_a_deleted_shard_is_a_miss(
        s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    rows, cache_root = _uploaded(s3, env, tmp_path, per_class=1, seed=41)
    first = _extract(rows, features.FeatureCache(cache_root, "ns", s3), s3)  # worker A computes and writes shards
    assert (first.requested, first.computed) == (len(rows), len(rows))
    shards = [uri for uri, _ in storage.list_files(cache_root, s3) if uri.endswith(".npz")]
    held = {uri: np.load(io.BytesIO(storage.read_bytes(uri, s3)))["keys"].tolist() for uri in shards}
    assert sorted(k for ks in held.values() for k in ks) == sorted(features.entry_key(s, 0) for s in rows["sha256"])
    assert all(uri.split("/")[-2] == features.partition(k) for uri, ks in held.items() for k in ks)  # <ns>/<digit>/
    keys = [features.entry_key(s, 0) for s in rows["sha256"]]
    expected = features.FeatureCache(cache_root, "ns", s3).get(keys)

    second = _extract(rows, features.FeatureCache(cache_root, "ns", s3), s3)  # worker B: nothing local, all reused
    assert (second.cached, second.computed) == (len(rows), 0)

    gone = storage.parse(shards[0])
    s3.delete_object(Bucket=gone.bucket, Key=gone.key)  # a shard's object is removed (lifecycle rule, cleanup)
    third = _extract(rows, features.FeatureCache(cache_root, "ns", s3), s3)
    lost = len(held[shards[0]])
    assert (third.cached, third.computed, third.corrupt) == (len(rows) - lost, lost, 0)  # a miss: recomputed
    assert storage.exists(shards[0], s3)  # and written again
    pd.testing.assert_frame_equal(pd.DataFrame(features.FeatureCache(cache_root, "ns", s3).get(keys)),
                                  pd.DataFrame(expected))


@contextlib.contextmanager
def _s3_calls(s3: Any) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every ListObjectsV2 and GetObject request the client makes inside the block: (operation, parameters)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    hooks = {op: (lambda params, op=op, **_: calls.append((op, dict(params)))) for op in ("ListObjectsV2", "GetObject")}
    for op, hook in hooks.items():
        s3.meta.events.register(f"before-parameter-build.s3.{op}", hook)
    try:
        yield calls
    finally:
        for op, hook in hooks.items():
            s3.meta.events.unregister(f"before-parameter-build.s3.{op}", hook)


def test_a_reader_lists_and_gets_only_the_partitions_of_its_chunk(s3: Any, env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    """Issue 24: the cache is partitioned by the first hex digit of the sha256; a worker given one chunk of the
    images (whole partitions) lists and downloads those partitions' shards and nothing else (counted requests)."""
    rows, cache_root = _uploaded(s3, env, tmp_path, per_class=4, seed=43)
    assert _extract(rows, features.FeatureCache(cache_root, "ns", s3), s3).computed == len(rows)
    everything = features.FeatureCache(cache_root, "ns", s3)
    all_keys = [features.entry_key(s, 0) for s in rows["sha256"]]
    expected = dict(zip(all_keys, everything.get(all_keys), strict=True))

    chunk = features.chunks(rows, 4)[1]
    parts = sorted({features.partition(s) for s in chunk["sha256"]})
    assert 0 < len(parts) < len(everything.loaded)  # a real subset of the partitions the data fills
    keys = [features.entry_key(s, 0) for s in chunk["sha256"]]
    namespace = storage.parse(cache_root).join("ns")
    in_parts = sorted(storage.parse(uri).key for uri, _ in storage.list_files(cache_root, s3)
                      if uri.split("/")[-2] in parts)
    reader = features.FeatureCache(cache_root, "ns", s3)
    with _s3_calls(s3) as calls:
        assert reader.missing(keys) == []
        got = reader.get(keys)
    listed = sorted(p["Prefix"] for op, p in calls if op == "ListObjectsV2")
    fetched = sorted(p["Key"] for op, p in calls if op == "GetObject")
    assert listed == [f"{namespace.key}/{p}/" for p in parts], listed  # one listing per partition of the chunk
    assert fetched == in_parts and in_parts, fetched  # each of their shards once, no other object
    assert sorted(reader.loaded) == parts
    np.testing.assert_array_equal(got, np.stack([expected[k] for k in keys]))
