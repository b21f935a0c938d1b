"""Benchmark: the ``cached`` strategy (features once, head on features) vs ``online`` (backbone in the loop).

Both train MobileNetV2 (real offline ImageNet weights) on the same stratified subset of the real Intel
photos, in one process, one after the other, and are scored on the same held-out images. Reported as
ratios, because this machine is shared and noisy.

    .venv/bin/python benchmarks/cached_vs_online.py [--per-class 200] [--online-epochs 10] [--views 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
INTEL = REPO.parent / "shared" / "data" / "intel" / "seg_train"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--online-epochs", type=int, default=10)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--image-size", type=int, default=150)
    a = p.parse_args()

    from scene.dataset import Dataset, build_dataset, fingerprint
    from scene.experiment import evaluate_all
    from scene.train import TrainConfig, all_predictions, fit

    full = build_dataset(str(INTEL))
    sub = full.manifest.groupby("label").head(a.per_class).reset_index(drop=True)
    ds = Dataset(sub, full.rejected, full.class_names, str(INTEL), None, fingerprint(sub))
    print(f"{len(sub)} images: " + ", ".join(f"{s} {len(ds.split(s))}" for s in ("train", "val", "test")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy, extra in (("cached", {"views": a.views}),
                                ("online", {"epochs": a.online_epochs, "patience": a.online_epochs})):
            cfg = TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), strategy=strategy,
                              image_size=a.image_size, **extra)
            t = time.perf_counter()
            fitted = fit(ds, cfg, Path(tmp) / strategy, cache_root=str(Path(tmp) / "cache"))
            seconds = time.perf_counter() - t
            m = evaluate_all(all_predictions(ds, cfg, fitted, cache_root=str(Path(tmp) / "cache")),
                             ds.class_names, bootstrap=1000)["test"]
            rows.append((strategy, seconds, len(fitted.history), m.f1_weighted, m.ci["f1_weighted"]))
            print(f"{strategy:7s} {seconds:7.1f} s  {len(fitted.history):3d} epochs  test F1 {m.f1_weighted:.3f} "
                  f"[{m.ci['f1_weighted'][0]:.3f}, {m.ci['f1_weighted'][1]:.3f}]", flush=True)
    (_, tc, _, fc, _), (_, to, _, fo, _) = rows
    print(f"online / cached time ratio: {to / tc:.2f}x; F1 cached - online: {fc - fo:+.3f}")


if __name__ == "__main__":
    main()
