"""Manifests: layouts, stable stratified splits, and bad input that is named, counted, never dropped."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scene.data.dataset import DatasetError, SplitConfig, assign_splits, build_dataset, unit_hash
from scene.data.synth import make_synthetic
from scene.metadata import CLASS_NAMES
from tests.support.files import settled_files


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
    """Folders beyond the Intel six: the sorted folder names are the classes; explicit classes must cover them."""
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    shutil.copytree(root / "sea", root / "cats")
    assert build_dataset(str(root)).class_names == tuple(sorted([*CLASS_NAMES, "cats"]))
    with pytest.raises(DatasetError, match=r"unknown class folders \['cats'\]"):
        build_dataset(str(root), class_names=CLASS_NAMES)
    ds = build_dataset(str(root), class_names=[*CLASS_NAMES, "cats"])
    assert ds.class_names == (*CLASS_NAMES, "cats")


def test_empty_class_folder_is_reported(tmp_path: Path, synth_dir: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    shutil.rmtree(root / "sea")
    (root / "sea").mkdir()
    ds = build_dataset(str(root))
    assert "empty class folder" in ds.rejected["problem"].tolist()
    assert ds.counts()["train"]["sea"] == 0


def test_missing_or_empty_source(tmp_path: Path) -> None:
    from scene.data.storage import StorageError

    with pytest.raises(StorageError, match="not a folder"):
        build_dataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no files found"):
        build_dataset(str(tmp_path / "empty"))


# --- sticky splits (issue 7, item 13) -----------------------------------------------------------------------


def _add_images(root: Path, tmp: Path, per_class: int, seed: int) -> None:
    extra = make_synthetic(tmp / f"more-{seed}", per_class, size=32, seed=seed)
    for c in CLASS_NAMES:
        for f in (extra / c).iterdir():
            shutil.copy(f, root / c / f"new{seed}_{f.name}")


def test_no_image_moves_split_given_the_previous_manifest_3_image_classes(tmp_path: Path) -> None:
    """With 3 images a class every val/test image is an "at least one per class" pick; adding images used to
    hand those picks to new images, moving the old picks back to train (7 of 18 images moved here)."""
    root = make_synthetic(tmp_path / "d", 3, size=32, seed=1)
    first = build_dataset(str(root))
    assert all(first.counts()[s][c] == 1 for s in ("train", "val", "test") for c in CLASS_NAMES)
    _add_images(root, tmp_path, 6, seed=99)
    old = first.manifest.set_index("key")["split"]
    stateless = build_dataset(str(root)).manifest.set_index("key")["split"]
    assert (stateless[old.index] != old).sum() > 0  # without the previous manifest the picks move
    sticky = build_dataset(str(root), previous=first.manifest)
    now = sticky.manifest.set_index("key")["split"]
    assert len(now) == 18 + 36 and (now[old.index] == old).all()
    assert all(sticky.counts()[s][c] >= 1 for s in ("train", "val", "test") for c in CLASS_NAMES)
    again = build_dataset(str(root), previous=sticky.manifest)  # a second round keeps everything too
    assert again.manifest.set_index("key")["split"].equals(now)


def test_a_3_photo_class_whose_hashes_say_test_twice_still_gets_a_validation_image() -> None:
    cfg = SplitConfig()
    shas = (f"{i:064x}" for i in range(10_000))
    low = [s for s in shas if unit_hash(s, cfg.seed) < cfg.test_fraction][:2]  # test by hash
    high = next(s for s in (f"{i:064x}" for i in range(10_000)) if unit_hash(s, cfg.seed) > 0.5)  # train by hash
    df = pd.DataFrame({"sha256": [*low, high], "label": ["sea"] * 3, "origin": ["pool"] * 3})
    split = assign_splits(df, False, cfg)
    assert sorted(split) == ["test", "train", "val"]  # was test, test, train: no validation image
    assert split[2] == "train"  # the validation image came from the test split, which keeps one


def test_per_class_picks_are_made_among_new_images_only() -> None:
    cfg = SplitConfig()
    old_sha = [f"{i:064x}" for i in range(3)]
    previous = pd.DataFrame({"sha256": old_sha, "split": ["train", "train", "train"], "key": ["a", "b", "c"]})
    df = pd.DataFrame({"sha256": [*old_sha, "f" * 64], "label": ["sea"] * 4, "origin": ["pool"] * 4})
    split = assign_splits(df, True, cfg, previous)
    assert split[:3].tolist() == ["train", "train", "train"]  # an old image is never drafted into val
    assert split[3] == "val"  # the class lacked a val image: the new one is picked
    no_new = assign_splits(df.iloc[:3], True, cfg, previous)
    assert no_new.tolist() == ["train", "train", "train"]  # nothing new to pick from: nothing moves
    with pytest.raises(DatasetError, match=r"previous manifest lacks columns \['split'\]"):
        assign_splits(df, True, cfg, previous.drop(columns="split"))


# --- local folders: symlinks, formats, orientation (issue 7, item 17) --------------------------------------------


def test_symlinks_leaving_the_dataset_are_rejected_and_listed(tmp_path: Path, synth_dir: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(outside / "private.jpg")
    (root / "sea" / "escape.jpg").symlink_to(outside / "private.jpg")
    (root / "forest" / "escape_dir").symlink_to(outside, target_is_directory=True)
    (root / "sea" / "dotdot.jpg").symlink_to(Path("..") / ".." / "secret" / "private.jpg")
    (root / "sea" / "inside.jpg").symlink_to(next((root / "forest").glob("*.jpg")))
    (root / "sea" / "broken.jpg").symlink_to(root / "nope.jpg")
    ds = build_dataset(str(root))
    problems = dict(zip(ds.rejected["key"].map(lambda k: Path(k).name), ds.rejected["problem"], strict=True))
    for name in ("escape.jpg", "escape_dir", "dotdot.jpg"):
        assert "outside the dataset folder" in problems[name], problems
    assert "broken symlink" in problems["broken.jpg"]
    assert not any("secret" in k or "private" in k for k in ds.manifest["key"])
    assert "inside.jpg" in set(ds.manifest["key"].map(lambda k: Path(k).name))  # a link within the folder is fine
    assert len(ds.manifest) == 72 + 1


def test_webp_tiff_accepted_and_sizes_are_upright(tmp_path: Path, synth_dir: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: 80 wide, 40 high; upright 40 wide, 80 high
    Image.new("RGB", (80, 40), (1, 2, 3)).save(root / "sea" / "phone.jpg", exif=exif)
    Image.new("RGB", (50, 60), (1, 2, 3)).save(root / "sea" / "a.webp")
    Image.new("RGB", (50, 60), (1, 2, 3)).save(root / "sea" / "b.tif")
    ds = build_dataset(str(root))
    rows = ds.manifest.assign(name=ds.manifest["key"].map(lambda k: Path(k).name)).set_index("name")
    assert ds.rejected.empty, ds.rejected
    assert (rows.at["phone.jpg", "width"], rows.at["phone.jpg", "height"]) == (40, 80)
    assert rows.at["a.webp", "format"] == "WEBP" and rows.at["b.tif", "format"] == "TIFF"


# --- generated data is marked ---------------------------------------------------------------------------------


def test_generated_data_is_marked_synthetic_through_save_and_load(tmp_path: Path, synth_dir: Path) -> None:
    from scene.data.dataset import load_dataset

    ds = build_dataset(str(synth_dir))
    assert ds.synthetic and ds.manifest["synthetic"].all()
    ds.manifest.to_csv(tmp_path / "manifest.csv", index=False)
    assert load_dataset(str(tmp_path / "manifest.csv")).synthetic
    photos = tmp_path / "photos"
    for c in CLASS_NAMES:  # re-encoded without the comment: photos, as far as anyone can tell
        (photos / c).mkdir(parents=True)
        for f in list((synth_dir / c).iterdir())[:3]:
            Image.fromarray(np.asarray(Image.open(f))).save(photos / c / f.name)
    real = build_dataset(str(photos))
    assert not real.synthetic and not real.manifest["synthetic"].any()
    real.manifest.drop(columns="synthetic").to_csv(tmp_path / "old.csv", index=False)  # a manifest from before
    assert not load_dataset(str(tmp_path / "old.csv")).synthetic


# --- a rebuild reads only new or changed objects (issue 9, item 4) -------------------------------------------


def _as_published(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest as the next run reads it back (the CSV the manifest step publishes)."""
    return pd.read_csv(io.StringIO(manifest.to_csv(index=False)), keep_default_na=False, dtype={"etag": str})


def test_rebuild_reads_only_new_and_changed_files(tmp_path: Path, synth_dir: Path) -> None:
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)
    first = build_dataset(str(settled_files(root)))
    assert first.objects_read == 72 and first.rows_reused == 0 and (first.manifest["etag"] != "").all()
    _add_images(root, tmp_path, 1, seed=21)  # 6 new files
    big, small = sorted((root / "sea").glob("sea_*.jpg"), key=lambda p: p.stat().st_size)[-1:-3:-1]
    old = big.stat()
    forged = small.read_bytes().ljust(old.st_size, b"\0")  # other content, same size, mtime set back below
    big.write_bytes(forged)
    os.utime(big, ns=(old.st_atime_ns, old.st_mtime_ns))
    again = build_dataset(str(settled_files(root)), previous=_as_published(first.manifest))  # trusted stat tags
    assert again.objects_read == 7 and again.rows_reused == 71
    row = again.manifest.set_index("key").loc[str(big)]
    assert row["sha256"] == hashlib.sha256(forged).hexdigest() != first.manifest.set_index("key").at[str(big), "sha256"]
    fresh = build_dataset(str(root), previous=first.manifest.drop(columns="etag"))  # sticky splits, all read
    assert fresh.objects_read == 78
    cols = [c for c in fresh.manifest.columns if c != "etag"]
    pd.testing.assert_frame_equal(again.manifest[cols], fresh.manifest[cols], check_dtype=False)
    assert again.fingerprint == fresh.fingerprint


def test_files_changed_within_the_racy_window_are_read_again(tmp_path: Path, synth_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from scene.data import dataset

    monkeypatch.setattr(dataset, "RACY_SECONDS", 3600.0)  # every file is "just written", however slow this machine
    root = tmp_path / "d"
    shutil.copytree(synth_dir, root)  # just written: no file is old enough to trust its stat tag
    first = build_dataset(str(root))
    assert (first.manifest["etag"] == "").all()
    assert build_dataset(str(root), previous=first.manifest).objects_read == 72


def test_old_manifests_without_etags_reuse_nothing(tmp_path: Path, synth_dir: Path) -> None:
    first = build_dataset(str(settled_files(synth_dir)))
    again = build_dataset(str(synth_dir), previous=first.manifest.drop(columns=["etag"]))
    assert again.objects_read == 72 and again.rows_reused == 0
    with pytest.raises(DatasetError, match=r"previous manifest lacks columns \['width'\]"):
        build_dataset(str(synth_dir), previous=first.manifest.drop(columns=["width"]))


def test_reading_in_chunks_builds_the_manifest_one_process_builds(tmp_path: Path, synth_dir: Path) -> None:
    """Issue 24: the new files split over 3 chunk listings, each read into its parts, gathered: the same manifest,
    rejected files and counts as one process; a lost or stale chunk is read again, never dropped."""
    from scene.data import reading

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    _write(data / "forest" / "broken.jpg", b"not a jpeg")
    _write(data / "sea" / "notes.txt", b"text")
    folder = str(tmp_path / "run" / "reading")
    seen: dict[str, object] = {}

    def fan_out(files: list) -> reading.ReadRows:
        listings = reading.split_files(files, folder, 3)
        for chunk in (0, 2):  # chunk 1's run was lost: no part
            reading.read_chunk(folder, chunk, roots=[str(data)])
        got, here = reading.collect(folder, listings, roots=[str(data)])
        seen.update(listings=listings, here=here, files=len(files))
        return got

    one = build_dataset(str(data))
    sharded = build_dataset(str(data), read=fan_out)
    assert seen["here"] == [1] and seen["files"] == 73  # 72 images + the broken one (the .txt is never read)
    pd.testing.assert_frame_equal(sharded.manifest, one.manifest)
    pd.testing.assert_frame_equal(sharded.rejected, one.rejected)
    assert sharded.fingerprint == one.fingerprint and sharded.objects_read == one.objects_read == 73
    assert "broken.jpg" in " ".join(sharded.rejected["key"])
    listings = seen["listings"]
    assert isinstance(listings, list)
    got, here = reading.collect(folder, listings)  # every chunk has its part now: nothing is read again
    assert here == [] and len(got.rows) == 72
    got, here = reading.collect(folder, [listings[0], "0" * 64, listings[2]])  # a part of another listing
    assert here == [1] and len(got.rows) == 72
    with pytest.raises(reading.ReadingError, match="outside the data roots"):
        reading.read_chunk(folder, 0, roots=[str(tmp_path / "elsewhere")])
