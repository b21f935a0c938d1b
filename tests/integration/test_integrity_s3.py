"""Integrity against the real S3 gateway: registered versions are verified before use, hostile keys never
escape the destination folder, and generated data stays marked after an upload."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scene import registry
from scene.data import storage
from scene.registry import integrity
from scene.registry.integrity import IntegrityError, fetch_version

pytestmark = pytest.mark.integration


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"integrity-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _version(tmp_path: Path, s3: Any, bucket: str, *, wrong_id: bool = False) -> tuple[str, Path]:
    """A version folder uploaded like the registry does (files + checksums.json); returns (uri, local folder)."""
    local = tmp_path / f"local-{uuid.uuid4().hex[:6]}"
    local.mkdir()
    (local / "model.keras").write_bytes(os.urandom(4096))
    (local / "config.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    (local / "plots").mkdir()
    (local / "plots" / "curve.png").write_bytes(b"png bytes")
    digest = storage.sha256_file(local / "model.keras")[:12]
    version = f"resnet50-{'0' * 12 if wrong_id else digest}"
    uri = f"s3://{bucket}/models/resnet50/{version}/"
    storage.upload_dir(local, uri, s3)
    return uri, local


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_version_downloads_only_listed_files_verified(tmp_path: Path, s3: Any, bucket: str) -> None:
    uri, local = _version(tmp_path, s3, bucket)
    storage.write_bytes(uri + "unlisted.bin", b"not in checksums.json", s3)  # never downloaded
    dest = fetch_version(s3, uri, tmp_path / "out" / "v")
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == ["config.json", "model.keras", "plots/curve.png"]
    assert (dest / "model.keras").read_bytes() == (local / "model.keras").read_bytes()
    assert _leftovers(tmp_path / "out") == ["v"]  # no temporary folder left behind
    only = fetch_version(s3, uri, tmp_path / "only", names=["model.keras"], optional=["config.json", "nope"])
    assert sorted(p.name for p in only.iterdir()) == ["config.json", "model.keras"]


def test_tampered_object_fails_naming_it_and_leaves_nothing(tmp_path: Path, s3: Any, bucket: str) -> None:
    uri, local = _version(tmp_path, s3, bucket)
    blob = bytearray((local / "model.keras").read_bytes())
    blob[100] ^= 0xFF  # same size, one byte changed
    storage.write_bytes(uri + "model.keras", bytes(blob), s3)
    with pytest.raises(IntegrityError, match=rf"{uri}model.keras: sha256 [0-9a-f]{{64}} does not match"):
        fetch_version(s3, uri, tmp_path / "out" / "v")
    assert _leftovers(tmp_path / "out") == []
    storage.write_bytes(uri + "model.keras", bytes(blob[:-1]), s3)
    with pytest.raises(IntegrityError, match=r"model\.keras: 4095 bytes, but 4096 were recorded"):
        fetch_version(s3, uri, tmp_path / "out" / "v")


def test_model_must_match_the_version_id(tmp_path: Path, s3: Any, bucket: str) -> None:
    uri, _ = _version(tmp_path, s3, bucket, wrong_id=True)
    with pytest.raises(IntegrityError, match="does not match the version id resnet50-000000000000"):
        fetch_version(s3, uri, tmp_path / "out")
    with pytest.raises(IntegrityError, match="not a registered model version"):
        fetch_version(s3, f"s3://{bucket}/models/resnet50/latest/", tmp_path / "out")


@pytest.mark.parametrize("name", ["../../../escaped.txt", "a/../../escaped.txt", "/etc/escaped.txt", "a//b.txt",
                                  "./x.txt", "a\\..\\b.txt", ""])
def test_hostile_checksums_entry_is_refused_before_any_download(tmp_path: Path, s3: Any, bucket: str,
                                                                name: str) -> None:
    uri, _ = _version(tmp_path, s3, bucket)
    listed = json.loads(storage.read_bytes(uri + "checksums.json", s3))
    listed.append({"uri": uri + name, "sha256": "0" * 64, "bytes": 1})
    storage.write_bytes(uri + "checksums.json", json.dumps(listed).encode(), s3)
    with pytest.raises(IntegrityError, match="refusing object name"):
        fetch_version(s3, uri, tmp_path / "deep" / "er" / "out")
    assert not list(tmp_path.rglob("escaped.txt")) and _leftovers(tmp_path / "deep" / "er") == []


def test_entry_outside_the_version_folder_is_refused(tmp_path: Path, s3: Any, bucket: str) -> None:
    uri, _ = _version(tmp_path, s3, bucket)
    other, _ = _version(tmp_path, s3, bucket)
    listed = json.loads(storage.read_bytes(uri + "checksums.json", s3))
    listed[0]["uri"] = other + "model.keras"
    storage.write_bytes(uri + "checksums.json", json.dumps(listed).encode(), s3)
    with pytest.raises(IntegrityError, match="is outside the version folder"):
        fetch_version(s3, uri, tmp_path / "out")


def test_registered_versions_verify(tmp_path: Path, s3: Any, bucket: str) -> None:
    """What scene.registry.register uploads (test_predictions.csv included) passes fetch_version as is."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.keras").write_bytes(os.urandom(2048))
    (folder / "metrics.json").write_text(json.dumps({"test": {"f1_weighted": 0.5, "accuracy": 0.5}}))
    preds = pd.DataFrame({"key": ["k"], "sha256": ["0" * 64], "y_true": [0], "y_pred": [0], "correct": [True]})
    v = registry.register(s3, bucket, folder, "mobilenetv2", preds, dataset="s3://data/datasets/demo/")
    dest = fetch_version(s3, v.uri, tmp_path / "fetched")
    assert sorted(p.name for p in dest.iterdir()) == ["metrics.json", "model.keras", "test_predictions.csv"]


def test_download_prefix_refuses_hostile_keys_before_writing(tmp_path: Path, s3: Any, bucket: str) -> None:
    """Keys the gateway stores as given (a backslash path here) are refused before any file is written; keys it
    refuses ('..') or normalises ('//') cannot hurt; at least one hostile key must have reached the check."""
    prefix = f"s3://{bucket}/run/resnet50/"
    storage.write_bytes(prefix + "a/model.keras", b"model", s3)
    got = storage.download_prefix(prefix, tmp_path / "out", s3)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in got] == ["a/model.keras"]
    refused = []
    for n, key in enumerate(("x/../../../escaped.txt", "/escaped.txt", "x\\..\\..\\escaped.txt")):
        try:  # the gateway may refuse or normalise such names itself; one that keeps them must not hurt us
            s3.put_object(Bucket=bucket, Key="run/resnet50/" + key, Body=b"x")
        except Exception:
            continue
        listed = {k[len(prefix):] for k, _ in storage.list_files(prefix, s3)} - {"a/model.keras"}
        out = tmp_path / f"out{n}"
        if key in listed:  # kept as given: refused, and nothing written
            with pytest.raises(storage.StorageError, match="refusing object name"):
                storage.download_prefix(prefix, out, s3)
            assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))  # not even a/model.keras
            refused.append(key)
        else:  # stored under a normalised name: whatever it became lands inside the folder
            assert all(p.resolve().is_relative_to(out.resolve()) for p in storage.download_prefix(prefix, out, s3))
        for k in listed:
            s3.delete_object(Bucket=bucket, Key="run/resnet50/" + k)
    assert refused, "no hostile key reached download_prefix: the gateway refused or normalised every one"
    assert not (tmp_path.parent / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_generated_data_stays_marked_after_an_upload(tmp_path: Path, s3: Any, bucket: str) -> None:
    from scene.data.dataset import build_dataset
    from scene.data.synth import make_synthetic

    root = make_synthetic(tmp_path / "d", 3, size=40, seed=2)
    dest = f"s3://{bucket}/datasets/demo/"
    for p in sorted(root.rglob("*.jpg")):  # what `scene data upload` does per file
        storage.upload_file(p, dest + p.relative_to(root).as_posix(), s3)
    ds = build_dataset(dest, s3=s3)
    assert len(ds.manifest) == 18 and ds.synthetic


def test_predict_flow_refuses_a_tampered_registered_model(tmp_path: Path, s3: Any, env: dict[str, str],
                                                          bucket: str) -> None:
    from flows.predict import resolve_model

    uri, local = _version(tmp_path, s3, bucket)
    resolve = resolve_model.with_options(retries=0)
    path, classes = resolve(uri + "model.keras")
    assert Path(path).read_bytes() == (local / "model.keras").read_bytes() and classes == ["a", "b"]
    storage.write_bytes(uri + "model.keras", np.zeros(4096, np.uint8).tobytes(), s3)
    with pytest.raises(IntegrityError, match=f"{uri}model.keras: sha256"):
        resolve(uri + "model.keras")
    assert integrity.is_version_uri(uri) and not integrity.is_version_uri(f"s3://{bucket}/elsewhere/")
