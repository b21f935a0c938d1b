"""Image packs on the real local S3 gateway: built while the manifest reads the images, read one GET per pack,
the same pixels as the objects, and the objects again when a pack is gone or damaged."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scene.data import image_fetch, packs, storage
from scene.data.dataset import build_dataset
from scene.data.synth import make_synthetic
from scene.model.pipeline import pixel_batches
from tests.support.s3io import upload

pytestmark = pytest.mark.integration


def test_packs_are_built_with_the_manifest_and_read_one_get_per_pack(s3: Any, env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    root = make_synthetic(tmp_path / "d", 6, size=40, seed=21)  # 36 images
    data = upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/packs-{run}/")
    pack_root = f"s3://{env['SCENE_ARTIFACT_BUCKET']}/packs-test-{run}"
    ds = build_dataset(data, s3=s3, packer=packs.PackWriter(pack_root, s3, images=8))
    m = ds.manifest
    assert len(m) == 36 and (m["pack"] != "").all() and ds.objects_read == 36
    stored = {uri for uri, _ in storage.list_files(pack_root + "/", s3)}
    assert stored == set(m["pack"]) and ds.packs_written == len(stored) == -(-m["sha256"].nunique() // 8)

    gets: list[str] = []
    fetch = image_fetch.reader(s3)

    def counted(uri: str) -> bytes:
        gets.append(uri)
        return fetch(uri)

    read = packs.reader(counted, packs.locations(m))
    assert [read(k) for k in m["key"]] == [storage.read_bytes(k, s3) for k in m["key"]]  # byte for byte
    assert sorted(gets) == sorted(stored)  # one GET per pack, none per image
    keys = m["key"].tolist()
    plain = np.concatenate(list(pixel_batches(keys, 40, batch_size=16, s3=s3)))
    packed = np.concatenate(list(pixel_batches(keys, 40, batch_size=16, s3=s3, packed=packs.locations(m))))
    assert np.array_equal(plain, packed)

    # a pack deleted, another overwritten with junk: those images come from their objects, the same pixels
    gone, junk = sorted(stored)[:2]
    s3.delete_object(Bucket=env["SCENE_ARTIFACT_BUCKET"], Key=storage.parse(gone).key)
    storage.write_bytes(junk, b"junk", s3)
    gets.clear()
    read = packs.reader(counted, packs.locations(m))
    assert [read(k) for k in m["key"]] == [storage.read_bytes(k, s3) for k in m["key"]]
    assert set(read.packs.bad) == {gone, junk} and "no such object" in read.packs.bad[gone]
    in_bad = m[m["pack"].isin([gone, junk])]
    assert sorted(g for g in gets if g.startswith(data)) == sorted(in_bad["key"])  # only those, once each
    again = np.concatenate(list(pixel_batches(keys, 40, batch_size=16, s3=s3, packed=packs.locations(m))))
    assert np.array_equal(plain, again)

    # new images: a rebuild reads and packs only them, and the images of the deleted pack (not the junk one: a
    # damaged pack is found only when read, and its images are then read from their objects, as above)
    more = make_synthetic(tmp_path / "more", 1, size=40, seed=22)
    for p in sorted(more.rglob("*.jpg")):  # one more image per class
        storage.upload_file(p, f"{data}{p.parent.name}/new-{p.name}", s3)
    rebuilt = build_dataset(data, s3=s3, previous=m, packer=packs.PackWriter(pack_root, s3, images=8))
    r = rebuilt.manifest.set_index("key")
    lost = m[m["pack"] == gone]
    assert len(r) == 42 and rebuilt.objects_read == 6 + len(lost) and rebuilt.rows_reused == 36 - len(lost)
    kept = m[m["pack"] != gone]
    assert (r.loc[kept["key"], "pack"].to_numpy() == kept["pack"].to_numpy()).all()
    repacked = r[r.index.str.contains("/new-") | r.index.isin(lost["key"])]
    assert len(repacked) == 6 + len(lost) and not set(repacked["pack"]) & set(m["pack"])
    assert rebuilt.packs_written == repacked["pack"].nunique() == -(-len(repacked) // 8)
    assert all(storage.exists(p, s3) for p in set(repacked["pack"]))
