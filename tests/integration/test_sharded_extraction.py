"""Issue 24, item 1: a backbone's feature extraction sharded over a work pool.

``train-all`` with ``extract_chunks=3`` first reads its new images in three runs of a ``read-chunk`` deployment (the
manifest step in chunks: the same manifest as one process builds, packs written), then publishes its manifest and
starts three runs of an ``extract-chunk``
deployment on the session stack's `default` process pool (its worker runs each in a process of its own); each
extracts one chunk of whole cache partitions into one S3 feature cache. Then the data audit extracts only what is
missing, the backbone's training process finds every vector cached, and the head trains.
The first chunk run seen Running is SIGKILLed: it is reported (Crashed), the two others complete and their summaries
(what the UI shows) count the vectors they computed, the images outside the lost chunk; train-all extracts the lost
chunk's images itself; every image's vector is stored once. The same training unsharded, into another cache, gives
the same vectors up to float rounding (1e-3 of their scale) and accuracies within one image on each split.
"""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scene.data import storage
from scene.train import features
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.procs import kill_first_running, watching
from tests.support.runs import artifacts_of, child_runs, deploy_on_default_pool
from tests.support.s3io import read_csv, upload

pytestmark = pytest.mark.integration
SIZE = 32


def _stored(cache: str, s3: Any) -> dict[str, np.ndarray]:
    """Every ``key: vector`` of every shard under ``cache`` (one namespace), failing on a key stored twice."""
    out: dict[str, np.ndarray] = {}
    for uri, _ in storage.list_files(cache, s3 if cache.startswith("s3://") else None):
        if uri.endswith(".npz"):
            with np.load(io.BytesIO(storage.read_bytes(uri, s3 if uri.startswith("s3://") else None))) as z:
                for key, vector in zip(z["keys"].tolist(), z["features"], strict=True):
                    assert key not in out, f"{key} stored twice"
                    out[key] = vector
    return out


@pytest.fixture(scope="module")
def deployment(env: dict[str, str]) -> str:
    """An extract-chunk deployment on the `default` pool (the session stack's process worker runs it)."""
    return deploy_on_default_pool("extract-chunk", "flows/extract_chunk.py:extract_chunk",
                                  f"chunks-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="module")
def reading(env: dict[str, str]) -> str:
    """A read-chunk deployment on the `default` pool."""
    return deploy_on_default_pool("read-chunk", "flows/read_chunk.py:read_chunk", f"reads-{uuid.uuid4().hex[:6]}")


def _data_and_params(s3: Any, env: dict[str, str], folder: Path) -> tuple[str, dict[str, Any]]:
    data = upload(s3, draw_hues(folder / "hues", 0, size=SIZE, per_class=8),
                  f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}sharded-{uuid.uuid4().hex[:6]}/")
    return data, {"backbones": ["mobilenetv2"], "weights": calibrated_mobilenetv2(folder, SIZE), "epochs": 20,
                  "views": 0, "image_size": SIZE}


def _computed(run: Any) -> int:
    """The vectors a completed chunk run computed, as its summary artifact says."""
    (summary,) = [a for a in artifacts_of(run.id) if a.key == "run-summary"]
    return int(re.search(r"\*\*computed\*\*: (\d+)", str(summary.data)).group(1))  # type: ignore[union-attr]


def _train(data: str, params: dict[str, Any], **more: Any) -> tuple[Any, dict[str, Any], dict[str, Any], Any]:
    """train-all (local dispatch, no gate): its state, its return value, the backbone's result, the run's manifest."""
    from flows.train_all import train_all
    from tests.support.s3io import client_from_env

    state = train_all(data=data, params=params, promote=False, start_timeout_s=120, return_state=True, **more)
    assert state.is_completed(), state.message
    out = state.result()
    (result,) = out["results"]
    assert result["status"] != "failed", result["error"]
    return state, out, result, read_csv(client_from_env(), out["prefix"] + "manifest.csv")


def test_three_chunks_one_killed_extract_every_image_once_and_train_what_an_unsharded_run_trains(
        deployment: str, reading: str, s3: Any, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    data, params = _data_and_params(s3, env, tmp_path)
    sharded_cache = f"s3://{env['SCENE_ARTIFACT_BUCKET']}/features/sharded-{uuid.uuid4().hex[:8]}/"
    plain_cache = str(tmp_path / "plain-cache")

    monkeypatch.setenv("SCENE_FEATURE_CACHE", sharded_cache)
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        reading_id = client.read_deployment_by_name(reading).id
    with watching(kill_first_running, deployment_id) as killed:
        state, _, sharded, manifest = _train(data, params, extract_chunks=3, extract_deployment=deployment,
                                             read_deployment=reading)
    assert killed, "no chunk run was killed: the test did not exercise a lost chunk"
    children = child_runs(state.state_details.flow_run_id)
    reads = [r for r in children if r.deployment_id == reading_id]
    assert sorted(r.name for r in reads) == [f"read chunk {i}/3" for i in (1, 2, 3)]
    assert all(r.state.is_completed() for r in reads), {r.name: r.state for r in reads}
    assert (manifest["pack"] != "").all()  # the chunk runs packed what they read
    chunk_runs = [r for r in children if r.deployment_id == deployment_id]
    assert sorted(r.name for r in chunk_runs) == [f"mobilenetv2 chunk {i}/3" for i in (1, 2, 3)]
    lost = next(r for r in chunk_runs if r.id == killed["run"])
    assert lost.state.is_crashed() or lost.state.is_failed(), lost.state  # reported, and the run went on
    others = [r for r in chunk_runs if r.id != killed["run"]]
    assert all(r.state.is_completed() for r in others), {r.name: r.state for r in others}
    images = len(manifest)
    index = int(killed["name"].rsplit(" ", 1)[1].split("/")[0]) - 1  # "mobilenetv2 chunk 2/3"
    its_images = len(features.chunks(manifest, 3)[index])
    assert images == 48 and its_images > 0
    assert sum(_computed(r) for r in others) == images - its_images  # the others' vectors, kept
    assert sharded["features_computed"] + sharded["features_cached"] == images  # the lost chunk's: this run's own
    in_sharded = _stored(sharded_cache, s3)
    keys = sorted(in_sharded)
    assert keys == sorted(features.entry_key(s, 0) for s in manifest["sha256"])  # every image, once

    monkeypatch.setenv("SCENE_FEATURE_CACHE", plain_cache)
    _, _, plain, plain_manifest = _train(data, params)
    same = ["key", "label", "split", "sha256", "width", "height", "mode", "format", "bytes", "etag"]
    assert manifest[same].equals(plain_manifest[same])  # read in chunks or in one process: the same manifest
    assert (plain["features_computed"], plain["features_cached"]) == (0, images)  # the audit extracted them here
    in_plain = _stored(plain_cache, s3)
    assert sorted(in_plain) == keys
    # the same vectors up to float rounding: different processes and batch sizes (16 images per chunk against 48)
    # let oneDNN sum in another order; CI measured differences up to 2.4e-4 on values up to ~2 (1e-4 relative)
    a, b = np.stack([in_sharded[k] for k in keys]), np.stack([in_plain[k] for k in keys])
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), np.abs(a - b).max()
    for split in ("train", "val", "test"):  # heads trained on those vectors: at most one image classified otherwise
        mine, theirs = sharded["metrics"][split], plain["metrics"][split]
        assert abs(mine["accuracy"] - theirs["accuracy"]) <= 1 / mine["n"] + 1e-9, (split, mine, theirs)
