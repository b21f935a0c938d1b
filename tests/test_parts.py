"""Sharded, streaming batch prediction (scene.model.parts): listing split, parts, manifest, integrity, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scene.model import parts
from scene.model.network import build_head
from scene.model.predict import frames, predict_frame

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model() -> keras.Model:
    inp = keras.Input((24, 24, 3))
    return keras.Model(inp, build_head(24 * 24 * 3, 3)(keras.layers.Flatten()(inp / 255.0)))


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """11 photos, a broken .jpg and a text file."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(src / f"{i:02d}.jpg")
    (src / "broken.jpg").write_bytes(b"not an image")
    (src / "notes.txt").write_text("x")
    return src


def test_a_listing_splits_into_chunks_each_key_once_and_always_in_the_same_chunk(tmp_path: Path) -> None:
    keys = [f"s3://b/p/{i}.jpg" for i in range(200)]
    counts = [n for n, _ in parts.split_listing(iter(keys), str(tmp_path / "out"), 3)]
    listed = [parts.read_listing(parts.listing_uri(str(tmp_path / "out"), i))[0] for i in range(3)]
    assert [len(x) for x in listed] == counts and sorted(k for x in listed for k in x) == sorted(keys)
    for i, chunk in enumerate(listed):
        assert all(parts.chunk_of(k, 3) == i for k in chunk)
    assert min(counts) > 30  # sha256 spreads keys: no chunk is starved
    for bad in (0, 17, 2.0, True):
        with pytest.raises(ValueError, match=rf"chunks={bad!r} is invalid; pass 1\.\.16"):
            parts.require_chunks(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="line break"):
        parts.split_listing(["a\nb.jpg"], str(tmp_path / "x"), 2)


def test_frames_stream_in_groups_and_equal_the_whole_frame(model: keras.Model, folder: Path) -> None:
    keys = sorted(str(p) for p in folder.glob("*.jpg"))
    groups = list(frames(model, keys, CLASSES, group=4, batch_size=4))
    assert [len(g) for g in groups] == [4, 4, 4]  # 12 .jpg, 3 groups; broken.jpg is a row with its error
    streamed = pd.concat(groups, ignore_index=True)
    whole = predict_frame(model, str(folder), CLASSES)
    assert (whole["error"] == "").sum() == 11  # 11 photos classified; broken.jpg and notes.txt listed with errors
    merged = whole.merge(streamed, on="key", suffixes=("", "_s"))
    assert len(merged) == 12 and (merged["label"] == merged["label_s"]).all()
    np.testing.assert_allclose(merged[[f"p_{c}" for c in CLASSES]].to_numpy(float),
                               merged[[f"p_{c}_s" for c in CLASSES]].to_numpy(float), atol=1e-6)
    assert whole.loc[whole["key"].str.endswith("notes.txt"), "error"].item() == "not an image file"
    assert "not a readable image" in streamed.loc[streamed["key"].str.endswith("broken.jpg"), "error"].item()


def test_parts_and_manifest_round_trip_and_a_changed_part_is_refused(model: keras.Model, folder: Path,
                                                                     tmp_path: Path, monkeypatch) -> None:
    out = str(tmp_path / "predictions")
    listed = sorted(str(p) for p in folder.iterdir())
    split = parts.split_listing(listed, out, 2)
    sources = [{"listing": digest, "model": "m1"} for _, digest in split]
    written = [parts.predict_part(model, parts.read_listing(parts.listing_uri(out, i))[0], CLASSES, out, i,
                                  source=sources[i]) for i in range(2)]
    assert [p.rows for p in written] == [n for n, _ in split] and sum(p.classified for p in written) == 11
    assert parts.read_part(out, 1, source=sources[1]) == written[1]  # the sidecar records the part
    assert parts.read_listing(parts.listing_uri(out, 1))[1] == sources[1]["listing"]
    # a part of another listing or model (an earlier run in a reused folder) is never taken for this run's
    assert parts.read_part(out, 1, source={**sources[1], "model": "m2"}) is None
    assert parts.read_part(out, 1, source={**sources[1], "listing": sources[0]["listing"]}) is None
    doc = parts.write_manifest(out, [written[1], written[0]], class_names=CLASSES, facts={"data": str(folder)})
    assert json.loads(Path(parts.manifest_uri(out)).read_text()) == doc
    assert (doc["rows"], doc["classified"], doc["unreadable"], doc["chunks"]) == (13, 11, 2, 2)
    assert [p["chunk"] for p in doc["parts"]] == [0, 1] and doc["columns"] == parts.columns(CLASSES)

    from_parquet = pd.concat(parts.read_predictions(parts.manifest_uri(out)), ignore_index=True)
    from_csv = pd.concat(parts.read_predictions(parts.manifest_uri(out), kind="csv"), ignore_index=True)
    assert sorted(from_parquet["key"]) == sorted(listed)  # every file once, with its prediction or its error
    assert list(from_parquet.columns) == list(from_csv.columns) == parts.columns(CLASSES)
    ok = from_parquet["error"] == ""
    np.testing.assert_allclose(from_parquet.loc[ok, "p_a"].to_numpy(float),
                               from_csv.loc[from_csv["error"] == "", "p_a"].to_numpy(float), atol=1e-6)
    assert from_parquet.loc[ok, [f"p_{c}" for c in CLASSES]].sum(axis=1).round(5).eq(1).all()
    reads: list[str] = []
    read_bytes = parts.storage.read_bytes
    monkeypatch.setattr(parts.storage, "read_bytes", lambda uri, s3=None: reads.append(uri) or read_bytes(uri, s3))
    sample = parts.sample_classified(parts.manifest_uri(out), 5)
    assert len(sample) == 5 and set(sample["key"]) <= set(from_parquet.loc[ok, "key"])
    assert reads.count(parts.manifest_uri(out)) == 1 and len(reads) == 3  # the manifest once, then each part once
    monkeypatch.undo()

    Path(written[0].files["parquet"]["uri"]).write_bytes(b"changed")
    with pytest.raises(parts.PartError, match=r"part-00000\.parquet: sha256"):
        list(parts.read_predictions(parts.manifest_uri(out)))
    with pytest.raises(parts.PartError, match=r"do not cover 0\.\.1"):
        parts.write_manifest(out, [written[1], written[1]], class_names=CLASSES, facts={})


def test_an_empty_chunk_writes_an_empty_part_with_its_columns(model: keras.Model, tmp_path: Path) -> None:
    part = parts.predict_part(model, [], CLASSES, str(tmp_path), 4)
    assert (part.rows, part.classified) == (0, 0)
    df = pd.read_parquet(part.files["parquet"]["uri"])
    assert list(df.columns) == parts.columns(CLASSES) and df.empty
