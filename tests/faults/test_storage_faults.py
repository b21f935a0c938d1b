"""Storage faults on this machine: a full disk or read-only folder under the feature cache and the work folder,
damaged cache shards and model files, and models that carry code. Real file systems (a small tmpfs mounted for the
test), real Keras files; nothing is mocked."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from scene.data import storage
from scene.errors import ModelLoadError
from scene.model.network import load
from scene.train import features

pytestmark = pytest.mark.faults


def _mount(where: Path, options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {where} ({done.stderr.strip()}); the disk-full tests need root "
                    "or CAP_SYS_ADMIN")
    return where


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs filled to the last byte (the filler file stays)."""
    disk = _mount(tmp_path / "disk", "size=256k")
    try:
        with open(disk / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError as err:
        assert err.errno == errno.ENOSPC
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    disk = _mount(tmp_path / "ro", "ro,size=64k")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_full_disk_under_the_feature_cache_names_the_shard_and_leaves_nothing(full_disk: Path) -> None:
    cache = features.FeatureCache(str(full_disk / "cache"), "ns")
    with pytest.raises(storage.StorageError, match=rf"{full_disk}/cache/ns/_/shard-[0-9a-f]+\.npz: cannot write "
                                                   r"\(No space left on device\); the disk holding .* is full"):
        cache.put([f"k{i}:0" for i in range(64)], np.ones((64, 256), np.float32))
    assert _files(full_disk) == ["filler"]  # no partial shard, no temporary file


def test_full_disk_in_the_work_folder_leaves_no_partial_model(full_disk: Path) -> None:
    from scene.train.fit import _save

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512)])  # ~130 KB of weights
    path = full_disk / "run" / "mobilenetv2" / "model.keras"
    with pytest.raises(storage.StorageError, match=rf"{path}: cannot write \(No space left on device\)"):
        _save(model, pd.DataFrame({"epoch": [0]}), path, None, None, 0.0)  # type: ignore[arg-type]
    assert _files(full_disk) == ["filler"]


def test_read_only_work_folder_is_named(read_only: Path) -> None:
    with pytest.raises(storage.StorageError, match=rf"{read_only}/x/metrics.json: cannot write .*read-only"):
        storage.write_bytes(str(read_only / "x" / "metrics.json"), b"{}")


def _rows(folder: Path, n: int) -> pd.DataFrame:
    keys = sorted(str(p) for p in folder.rglob("*.jpg"))[:n]
    return pd.DataFrame({"key": keys, "sha256": [storage.sha256_file(k) for k in keys]})


def _extract(rows: pd.DataFrame, cache: features.FeatureCache, model: keras.Model) -> features.ExtractStats:
    return features.extract(rows, [0], backbone="mobilenetv2", weights=None, size=48,  # type: ignore[arg-type]
                            cache=cache, batch_size=2, shard_size=2, model=model)


def test_damaged_cache_shards_are_detected_and_recomputed(tmp_path: Path, synth_dir: Path) -> None:
    rows = _rows(synth_dir, 6)
    model = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.GlobalAveragePooling2D()])
    first = _extract(rows, features.FeatureCache(str(tmp_path), "ns"), model)
    assert (first.computed, first.corrupt) == (6, 0)
    shards = sorted((tmp_path / "ns").rglob("shard-*.npz"))  # shard_size 2: up to 2 vectors per partition's shard
    assert len(shards) >= 3  # each shard in the folder of its keys' partition (their sha256's first hex digit)
    assert all({features.partition(k) for k in np.load(p)["keys"].tolist()} == {p.parent.name} for p in shards)
    damaged = sum(len(np.load(p)["keys"]) for p in shards[:2])  # the vectors the two damaged shards hold
    keys = [features.entry_key(s, 0) for s in rows["sha256"]]
    expected = features.FeatureCache(str(tmp_path), "ns").get(keys)
    blob = bytearray(shards[0].read_bytes())  # one byte of a stored vector flipped: loads fine, wrong numbers
    with np.load(shards[0]) as z:
        at = bytes(blob).index(z["features"][0].tobytes())
    blob[at + 1] ^= 0xFF
    shards[0].write_bytes(bytes(blob))
    shards[1].write_bytes(shards[1].read_bytes()[:-100])  # truncated
    cache = features.FeatureCache(str(tmp_path), "ns")
    again = _extract(rows, cache, model)
    assert (again.corrupt, again.computed, again.cached) == (2, damaged, 6 - damaged)
    assert sorted(cache.corrupt) == [str(p) for p in shards[:2]]
    np.testing.assert_array_equal(features.FeatureCache(str(tmp_path), "ns").get(keys), expected)


def test_a_model_with_a_lambda_layer_is_refused(tmp_path: Path) -> None:
    inp = keras.Input((4,))
    path = tmp_path / "lambda.keras"
    keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp)).save(path)
    with pytest.raises(ModelLoadError, match=rf"{path}: refusing to load: it contains a Lambda layer"):
        load(str(path))


def test_a_truncated_model_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ModelLoadError, match=rf"{path}: not a complete \.keras archive"):
        load(str(path))
