"""Image packs on a local root: content addresses, the reader's checks and fall-backs, the manifest's column."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scene.data import packs, storage
from scene.data.dataset import build_dataset, load_dataset
from scene.model.pipeline import pixel_batches


def _images(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        data = rng.bytes(int(rng.integers(100, 400)))
        out.append((storage.sha256_bytes(data), data))
    return out


def test_the_same_images_make_the_same_pack_and_every_image_reads_back(tmp_path: Path) -> None:
    images = _images(10)
    a = packs.PackWriter(str(tmp_path / "a"), images=4)
    b = packs.PackWriter(str(tmp_path / "b"), images=4)
    for sha, data in images:
        a.add(sha, data)
        a.add(sha, data)  # the same image twice (two keys, one content) is packed once
        b.add(sha, data)
    where_a, where_b = a.close(), b.close()
    assert len(set(where_a.values())) == 3  # 4 + 4 + 2
    names = sorted(Path(u).name for u in set(where_a.values()))
    assert names == sorted(Path(u).name for u in set(where_b.values()))  # content-addressed names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()  # and bytes
    with zipfile.ZipFile(tmp_path / "a" / names[0]) as z:  # a plain, uncompressed zip
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    gets: list[str] = []

    def fetch(uri: str) -> bytes:
        gets.append(uri)
        return storage.read_bytes(uri)

    reader = packs.PackReader(fetch)
    assert all(reader.get(where_a[sha], sha) == data for sha, data in images)
    assert len(gets) == 3 and reader.fetched == 3 and not reader.bad  # one read per pack


def test_a_missing_or_damaged_pack_is_not_used_and_warned_about_once(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    images = _images(6, seed=1)
    writer = packs.PackWriter(str(tmp_path), images=2)
    for sha, data in images:
        writer.add(sha, data)
    where = writer.close()
    first, second, third = (where[images[i][0]] for i in (0, 2, 4))
    Path(first).unlink()  # deleted
    Path(second).write_bytes(b"not a zip")  # damaged
    members = packs.decode(Path(third).read_bytes())
    members[images[4][0]] = b"other bytes"  # a member whose bytes do not match its name
    Path(third).write_bytes(packs.encode(list(members.items())))
    reader = packs.PackReader(storage.read_bytes)
    with caplog.at_level(logging.WARNING, logger="scene.data.packs"):
        got = [reader.get(where[sha], sha) for sha, _ in images]
        reader.get(first, images[0][0])
    assert got[:5] == [None, None, None, None, None] and got[5] == images[5][1]
    assert set(reader.bad) == {first, second, third}
    assert "does not match its SHA-256" in reader.bad[third] and len(caplog.records) == 3


def test_pixels_read_through_a_reader_with_broken_packs_equal_the_files(synth_dir: Path, tmp_path: Path) -> None:
    keys = sorted(str(p) for p in synth_dir.rglob("*.jpg"))[:9]
    writer = packs.PackWriter(str(tmp_path), images=4)
    for key in keys:
        data = Path(key).read_bytes()
        writer.add(storage.sha256_bytes(data), data)
    where = writer.close()
    packed = {k: (where[storage.sha256_bytes(Path(k).read_bytes())], storage.sha256_bytes(Path(k).read_bytes()))
              for k in keys}
    Path(packed[keys[0]][0]).unlink()  # the first pack is gone: its images come from their files
    plain = np.concatenate(list(pixel_batches(keys, 48, batch_size=4)))
    via_packs = np.concatenate(list(pixel_batches(keys, 48, batch_size=4, packed=packed)))
    assert np.array_equal(plain, via_packs)


def test_manifests_carry_the_pack_column_and_older_ones_read_as_unpacked(synth_dir: Path, tmp_path: Path) -> None:
    ds = build_dataset(str(synth_dir), packer=packs.PackWriter(str(tmp_path / "packs"), images=16))
    assert (ds.manifest["pack"] != "").all() and ds.packs_written == len(set(ds.manifest["pack"]))
    assert ds.packs_written == -(-ds.manifest["sha256"].nunique() // 16)
    m = ds.manifest
    assert packs.locations(m) == {k: (p, h) for k, p, h in zip(m["key"], m["pack"], m["sha256"], strict=True)}
    ds.manifest.to_csv(tmp_path / "manifest.csv", index=False)  # as the publish step writes it
    again = load_dataset(str(tmp_path / "manifest.csv"))
    assert list(again.manifest["pack"]) == list(ds.manifest["pack"])
    older = tmp_path / "older.csv"
    ds.manifest.drop(columns=["pack"]).to_csv(older, index=False)
    old = load_dataset(str(older)).manifest  # no packs, but every row's hash is still checked on reading
    assert packs.locations(old) == {k: ("", h) for k, h in zip(old["key"], old["sha256"], strict=True)}
    unpacked = build_dataset(str(synth_dir))  # no packer (local data by default): no packs
    assert (unpacked.manifest["pack"] == "").all() and unpacked.packs_written == 0
    unpacked.manifest.to_csv(tmp_path / "unpacked.csv", index=False)  # a run's manifest.csv, read back by pandas
    raw = pd.read_csv(tmp_path / "unpacked.csv")  # its empty pack cells are NaN: no pack, not a pack named "nan"
    assert packs.locations(raw) == {k: ("", h) for k, h in zip(raw["key"], raw["sha256"], strict=True)}


def _changed_after_manifest(synth_dir: Path, tmp_path: Path) -> tuple[Any, str, str]:
    """A local dataset whose first test image is overwritten (by another valid JPEG) after its manifest was built;
    returns the dataset, that key and the sha256 its manifest row records."""
    root = tmp_path / "data"
    shutil.copytree(synth_dir, root)
    ds = build_dataset(str(root))
    row = ds.manifest.sort_values("key").iloc[0]
    other = ds.manifest[ds.manifest["label"] != row["label"]].iloc[0]
    Path(row["key"]).write_bytes(Path(other["key"]).read_bytes())  # a valid image, other content
    return ds, str(row["key"]), str(row["sha256"])


def test_every_read_of_a_manifest_image_is_checked_against_its_sha256(synth_dir: Path, tmp_path: Path) -> None:
    from scene.model.pipeline import image_dataset

    ds, key, sha = _changed_after_manifest(synth_dir, tmp_path)
    rows = ds.manifest.sort_values("key")
    with pytest.raises(packs.ContentMismatch, match=f"{key}: .* but the manifest records {sha}"):
        list(pixel_batches(rows["key"].tolist(), 48, batch_size=4, packed=packs.locations(rows)))  # local files
    for shuffle in (False, True):  # in order and the online path's shuffled order (no packs) alike
        with pytest.raises(Exception, match=f"the manifest records {sha}"):
            list(image_dataset(rows, 48, num_classes=len(ds.class_names), batch_size=4, shuffle=shuffle))
    unchecked = rows[rows["key"] != key]
    assert len(list(pixel_batches(unchecked["key"].tolist(), 48, batch_size=4, packed=packs.locations(unchecked))))

    writer = packs.PackWriter(str(tmp_path / "packs"), images=4)  # a damaged pack falls back to the object: checked
    writer.add(sha, b"not the image")  # a member whose bytes do not match: the reader falls back to the file
    where = packs.locations(rows.assign(pack=rows["sha256"].map(writer.close()).fillna("")))
    with pytest.raises(packs.ContentMismatch, match=key):
        packs.reader(storage.read_bytes, where)(key)


def test_a_changed_image_fails_extraction_and_its_vector_is_never_cached(synth_dir: Path, tmp_path: Path) -> None:
    import keras

    from scene.train import features

    ds, key, sha = _changed_after_manifest(synth_dir, tmp_path)
    rows = ds.manifest.sort_values("key")
    rows = pd.concat([rows[rows["key"] != key].head(3), rows[rows["key"] == key]])  # 3 good images, then the bad
    model = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.GlobalAveragePooling2D()])
    cache = features.FeatureCache(str(tmp_path / "cache"), "ns")
    with pytest.raises(packs.ContentMismatch, match=key):
        features.extract(rows, [0], backbone="mobilenetv2", weights=None, size=48, cache=cache,  # type: ignore[arg-type]
                         batch_size=1, shard_size=1, model=model)
    again = features.FeatureCache(str(tmp_path / "cache"), "ns")  # what is on disk
    good = [features.entry_key(s, 0) for s in rows["sha256"][:3]]
    assert again.missing(good) == [] and again.missing([features.entry_key(sha, 0)]) == [f"{sha}:0"]
