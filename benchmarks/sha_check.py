"""Benchmark: what checking every image read against its manifest SHA-256 costs, per image, against decode + resize.

Every image read for features or scoring is hashed and compared with its manifest row (:func:`scene.data.packs.verify`,
through :func:`scene.data.packs.reader`). In one process, on the same images held in memory (so no storage time
hides either side), per image:

1. ``sha256``: :func:`scene.data.storage.sha256_bytes` of the file's bytes (the whole cost of the check);
2. ``read (checked)`` minus ``read (unchecked)``: the reader with and without the manifest hashes, to show the
   check adds nothing beyond the hash;
3. ``decode + resize``: :func:`scene.model.pipeline.load_pixels` (decode to RGB, resize and pad to ``--size``), the
   work the check sits beside (the backbone's own time comes on top of it, so the share of a full extraction is
   smaller still).

Each is timed ``--rounds`` times over all images; the minimum round is reported (the machine is shared). The
ratio sha256 / (decode + resize) is the check's share of the per-image input work; it stays the same when the
inference runtime gets faster, because neither side runs in the backbone.

    .venv/bin/python benchmarks/sha_check.py [--images 500] [--size 150] [--rounds 5]

Images: the real Intel photos in ``../shared/data/intel/seg_train`` when present, else generated ones.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
INTEL = REPO.parent / "shared" / "data" / "intel" / "seg_train"


def _images(n: int) -> dict[str, bytes]:
    """``{key: bytes}`` of ``n`` real photos (else generated 150-px JPEGs)."""
    paths = sorted(INTEL.rglob("*.jpg"))[:: max(1, len(list(INTEL.rglob("*.jpg"))) // n)][:n] if INTEL.is_dir() else []
    if not paths:
        from scene.data.synth import make_synthetic

        root = make_synthetic(Path(tempfile.mkdtemp(prefix="sha-bench-")) / "data", -(-n // 6), size=150, seed=1)
        paths = sorted(root.rglob("*.jpg"))[:n]
    return {str(p): p.read_bytes() for p in paths}


def _best(fn: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

    from scene.data import packs, storage
    from scene.model.pipeline import load_pixels

    data = _images(a.images)
    keys = list(data)
    shas = {k: storage.sha256_bytes(v) for k, v in data.items()}
    where = {k: ("", shas[k]) for k in keys}
    checked, unchecked = packs.reader(data.__getitem__, where), packs.reader(data.__getitem__, {})
    load_pixels(keys[0], a.size, fetch=data.__getitem__)  # trace the resize once, outside the timing

    n = len(keys)
    sha_s = _best(lambda: [storage.sha256_bytes(data[k]) for k in keys], a.rounds) / n
    read_checked = _best(lambda: [checked(k) for k in keys], a.rounds) / n
    read_plain = _best(lambda: [unchecked(k) for k in keys], a.rounds) / n
    decode_s = _best(lambda: [load_pixels(k, a.size, fetch=data.__getitem__) for k in keys], a.rounds) / n
    result = {
        "images": n, "source": "intel photos" if str(INTEL) in keys[0] else "generated",
        "mean_bytes": round(sum(map(len, data.values())) / n), "size": a.size, "rounds": a.rounds,
        "sha256_us": round(sha_s * 1e6, 1), "checked_read_extra_us": round((read_checked - read_plain) * 1e6, 1),
        "decode_resize_us": round(decode_s * 1e6, 1), "ratio_sha_to_decode_resize": round(sha_s / decode_s, 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
