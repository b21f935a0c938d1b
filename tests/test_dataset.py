"""Manifests: layouts, stable stratified splits, and bad input that is named, counted, never dropped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from scene.dataset import DatasetError, SplitConfig, assign_splits, build_dataset, unit_hash
from scene.metadata import CLASS_NAMES
from scene.synth import make_synthetic


def test_plain_layout_manifest_columns_and_classes(synth_dir: Path) -> None:
    ds = build_dataset(str(synth_dir))
    assert ds.class_names == CLASS_NAMES
    assert len(ds.manifest) == 72 and ds.rejected.empty
    assert {"key", "label", "split", "sha256", "width", "height", "mode", "bytes"} <= set(ds.manifest.columns)
    counts = ds.counts()
    for c in CLASS_NAMES:  # every class in every split, even with 12 images a class
        assert counts["train"][c] > 0 and counts["val"][c] > 0 and counts["test"][c] > 0


def test_kaggle_nesting_uses_seg_test_as_test(kaggle_dir: Path) -> None:
    ds = build_dataset(str(kaggle_dir))
    test = ds.split("test")
    assert len(test) == 18 and all("seg_test" in k for k in test["key"])
    assert not any("seg_test" in k for k in ds.manifest[ds.manifest.split != "test"]["key"])
    assert ds.counts()["val"] == {c: v for c, v in ds.counts()["val"].items() if v >= 1}
    nested = build_dataset(str(kaggle_dir / "seg_train"))  # seg_train/seg_train/<class> accepted too
    assert set(nested.manifest["label"]) == set(CLASS_NAMES)


def test_explicit_test_folder(kaggle_dir: Path) -> None:
    ds = build_dataset(str(kaggle_dir / "seg_train" / "seg_train"), str(kaggle_dir / "seg_test" / "seg_test"))
    assert len(ds.split("test")) == 18


def test_split_is_stratified_about_20_percent_and_seeded(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "d", 60, size=32, seed=1)
    ds = build_dataset(str(root), str(root))  # test folder given: val is 20% of each class's pool
    val = ds.split("val")["label"].value_counts()
    assert all(5 <= val[c] <= 20 for c in CLASS_NAMES), val.to_dict()
    other = build_dataset(str(root), str(root), split=SplitConfig(seed=7))
    assert set(other.split("val")["sha256"]) != set(ds.split("val")["sha256"])


def test_split_of_an_image_never_changes_when_images_are_added(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "d", 30, size=32, seed=1)
    before = build_dataset(str(root)).manifest.set_index("key")["split"]
    make_synthetic(tmp_path / "more", 10, size=32, seed=99)
    for c in CLASS_NAMES:
        for f in (tmp_path / "more" / c).iterdir():
            shutil.copy(f, root / c / f"new_{f.name}")
    after = build_dataset(str(root)).manifest.set_index("key")["split"]
    assert len(after) == len(before) + 60
    assert (after[before.index] == before).all()


def test_identical_copies_share_a_split() -> None:
    import pandas as pd

    df = pd.DataFrame({"sha256": ["a" * 64, "a" * 64, "b" * 64], "label": ["sea"] * 3, "origin": ["pool"] * 3})
    split = assign_splits(df, False, SplitConfig())
    assert split[0] == split[1]
    assert 0 <= unit_hash("a" * 64, 1) < 1


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_bad_files_are_rejected_by_name_and_modes_converted(tmp_path: Path, synth_dir: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    good = (root / "sea").iterdir().__next__().read_bytes()
    _write(root / "sea" / "zero.jpg", b"")
    _write(root / "sea" / "text.jpg", b"hello, not a jpeg")
    _write(root / "sea" / "truncated.jpg", good[: len(good) // 2])
    _write(root / "sea" / "notes.txt", b"a note")
    Image.new("RGB", (8, 8)).save(root / "forest" / "tiny.png")
    Image.new("RGB", (40, 40), (1, 2, 3)).convert("CMYK").save(root / "forest" / "cmyk.jpg")
    Image.new("RGB", (40, 40)).convert("P").save(root / "forest" / "palette.png")
    _write(root / "stray.jpg", good)
    ds = build_dataset(str(root))
    problems = dict(zip(ds.rejected["key"].map(lambda k: Path(k).name), ds.rejected["problem"], strict=True))
    assert problems["zero.jpg"].startswith("empty file")
    assert "not a readable image" in problems["text.jpg"]
    assert "truncated" in problems["truncated.jpg"] or "not a readable" in problems["truncated.jpg"]
    assert "not an image file" in problems["notes.txt"]
    assert "smaller than" in problems["tiny.png"]
    assert "not inside a class folder" in problems["stray.jpg"]
    notes = dict(zip(ds.manifest["key"].map(lambda k: Path(k).name), ds.manifest["note"], strict=True))
    assert "CMYK" in notes["cmyk.jpg"] and "palette" in notes["palette.png"]
    assert len(ds.manifest) + len(ds.rejected) == 72 + 8  # nothing silently dropped


def test_unknown_class_folder_names_it(tmp_path: Path, synth_dir: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    shutil.copytree(root / "sea", root / "cats")
    with pytest.raises(DatasetError, match=r"unknown class folders \['cats'\].*--classes"):
        build_dataset(str(root))
    ds = build_dataset(str(root), class_names=[*CLASS_NAMES, "cats"])
    assert "cats" in ds.class_names


def test_empty_class_folder_is_reported(tmp_path: Path, synth_dir: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    shutil.rmtree(root / "sea")
    (root / "sea").mkdir()
    ds = build_dataset(str(root))
    assert "empty class folder" in ds.rejected["problem"].tolist()
    assert ds.counts()["train"]["sea"] == 0


def test_missing_or_empty_source(tmp_path: Path) -> None:
    from scene.storage import StorageError

    with pytest.raises(StorageError, match="not a folder"):
        build_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no files found"):
        build_dataset(str(tmp_path / "empty"))
