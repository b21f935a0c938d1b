"""Benchmark: objects read by the manifest step of a retrain after +10% images, vs building it from scratch.

A local stack (JuiceFS S3 gateway, ``--keep-etag``) is started in a temporary folder on free ports. N generated
images are uploaded to a fresh dataset prefix; then, in one process:

1. the first manifest (every object read: nothing to reuse);
2. +10% new images are uploaded and the manifest is rebuilt *given the first one*, as a retrain does (rows of
   objects whose ETag and size are unchanged are copied; only the new objects are read);
3. the same rebuild *without* reusing rows (the previous manifest minus its ``etag`` column: sticky splits
   only, every object read) — what the retrain did before manifests recorded ETags.

On S3 every build also writes image packs of the objects it reads, as the flow's manifest step does
(:mod:`scene.data.packs`). Printed: objects read, packs written and wall time of each, and (3)/(2), because this
machine is shared and noisy. The two rebuilds must give the same manifest apart from ETags and packs (checked). The
same is then measured on a local folder (stat tags; local folders are not packed). On S3, the rebuild that reads
all is also run without packs: the packs' share of the manifest step.

    .venv/bin/python benchmarks/retrain_reads.py [--images 2000] [--new 0.10] [--size 150]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images(out: Path, total: int, seed: int, size: int, tag: str) -> list[Path]:
    """About ``total`` generated images in ``out/<class>/``, file names prefixed with ``tag``."""
    from scene.data.synth import make_synthetic
    from scene.metadata import CLASS_NAMES

    make_synthetic(out, max(1, round(total / len(CLASS_NAMES))), size=size, seed=seed)
    files = sorted(out.rglob("*.jpg"))
    for f in files:
        f.rename(f.with_name(tag + f.name))
    return sorted(out.rglob("*.jpg"))


def _upload(files: list[Path], root: Path, dest: str, s3: Any) -> None:
    from scene.data import storage

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: storage.upload_file(p, dest + p.relative_to(root).as_posix(), s3), files))


def _round(src: str, s3: Any, previous: Any, artifact_bucket: str) -> tuple[Any, float]:
    from scene.data import packs
    from scene.data.dataset import build_dataset

    t = time.perf_counter()
    packer = packs.writer_for(src, artifact_bucket, s3) if artifact_bucket else None
    ds = build_dataset(src, s3=s3, previous=previous, packer=packer)
    return ds, time.perf_counter() - t


def _published(manifest: Any) -> Any:
    """The manifest as the next run reads it back from ``manifest.csv``."""
    import pandas as pd

    return pd.read_csv(io.StringIO(manifest.to_csv(index=False)), keep_default_na=False,
                       dtype={"etag": str, "pack": str})


def measure(src: str, add: Any, s3: Any, label: str, artifact_bucket: str = "") -> None:
    """Build, ``add()`` the new images, rebuild with and without reuse; print reads, times and the ratio."""
    from scene.data import storage

    first, t_first = _round(src, s3, None, artifact_bucket)
    add()
    reuse, t_reuse = _round(src, s3, _published(first.manifest), artifact_bucket)
    full, t_full = _round(src, s3, _published(first.manifest).drop(columns="etag"), artifact_bucket)
    bare, t_bare = _round(src, s3, _published(first.manifest).drop(columns="etag"), "")  # the same, packing nothing
    t = time.perf_counter()
    listed = sum(1 for _ in storage.list_files(src, s3))
    t_list = time.perf_counter() - t
    cols = [c for c in full.manifest.columns if c not in ("etag", "pack")]
    assert reuse.manifest[cols].astype(str).equals(full.manifest[cols].astype(str)), "the two rebuilds differ"
    new = len(full.manifest) - len(first.manifest)
    print(f"[{label}] {len(first.manifest)} images, then +{new} new")
    for name, ds, t in (("first manifest", first, t_first), ("rebuild, reusing rows", reuse, t_reuse),
                        ("rebuild, reading all", full, t_full),
                        *((("  the same, no packs", bare, t_bare),) if artifact_bucket else ())):
        print(f"  {name:25s} objects read {ds.objects_read:6d}   packs written {ds.packs_written:3d}   {t:6.2f} s"
              + (f"   (rows reused {ds.rows_reused})" if ds is reuse else ""))
    print(f"  reads {reuse.objects_read}/{full.objects_read} = {reuse.objects_read / full.objects_read:.3f}, "
          f"time {t_reuse:.2f}/{t_full:.2f} s = {t_reuse / t_full:.3f}; listing alone ({listed} files) {t_list:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--new", type=float, default=0.10)
    p.add_argument("--size", type=int, default=150, help="image side in pixels (the Intel photos are 150)")
    a = p.parse_args()

    from scene.data import storage
    from scene.data.dataset import RACY_SECONDS
    from scene.ops import stack

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        old = _images(tmp / "old", a.images, 1, a.size, "a")
        new = _images(tmp / "new", round(a.images * a.new), 2, a.size, "b")
        state = tmp / "state"
        stack.up(state, s3_port=_port(), prefect_port=_port(), pools=())
        try:
            cfg = stack.settings_for(state)
            s3 = storage.s3_client(cfg)
            src = f"s3://{cfg.data_bucket}/{cfg.data_prefix}bench-{uuid.uuid4().hex[:8]}/"
            _upload(old, tmp / "old", src, s3)
            measure(src, lambda: _upload(new, tmp / "new", src, s3), s3, "S3 gateway", cfg.artifact_bucket)
        finally:
            stack.down(state)
        local = tmp / "local"
        shutil.copytree(tmp / "old", local)
        time.sleep(RACY_SECONDS + 0.1)  # files younger than this get no stat tag (see scene.data.dataset)
        measure(str(local), lambda: shutil.copytree(tmp / "new", local, dirs_exist_ok=True), None, "local folder")


if __name__ == "__main__":
    main()
