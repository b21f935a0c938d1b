"""Benchmark: retraining after 10% new images vs a full training on the same data (cached strategy).

Real Intel photos and the offline MobileNetV2 ImageNet weights. In one process: (1) full training on the
data *with* the new images and a cold feature cache; (2) training on the data *without* them (warms the
cache); (3) retraining after the new images arrive (only they go through the backbone). Reported as the
ratio (3)/(1), because this machine is shared and noisy.

    .venv/bin/python benchmarks/retrain_incremental.py [--per-class 250] [--new 0.10] [--views 2]
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
    p.add_argument("--per-class", type=int, default=250)
    p.add_argument("--new", type=float, default=0.10)
    p.add_argument("--views", type=int, default=2)
    a = p.parse_args()

    import pandas as pd

    from scene.data.dataset import Dataset, build_dataset, fingerprint
    from scene.train.fit import TrainConfig
    from scene.train.stages import train_one

    full = build_dataset(str(INTEL))
    rows = full.manifest.groupby("label").head(a.per_class).reset_index(drop=True)
    old = rows.sample(frac=1 - a.new, random_state=0).sort_index()

    def ds(m: pd.DataFrame) -> Dataset:
        m = m.reset_index(drop=True)
        return Dataset(m, full.rejected, full.class_names, str(INTEL), None, fingerprint(m))

    cfg = TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), views=a.views)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        r_full = train_one(ds(rows), cfg, Path(tmp) / "full", cache_root=str(Path(tmp) / "cold"))
        t_full = time.perf_counter() - t
        train_one(ds(old), cfg, Path(tmp) / "old", cache_root=str(Path(tmp) / "warm"))
        t = time.perf_counter()
        r_inc = train_one(ds(rows), cfg, Path(tmp) / "inc", cache_root=str(Path(tmp) / "warm"))
        t_inc = time.perf_counter() - t
    print(f"{len(rows)} images, {len(rows) - len(old)} new ({a.new:.0%}), views {a.views}")
    print(f"full training      {t_full:7.1f} s  features computed {r_full.features_computed:6d}  "
          f"test F1 {r_full.metrics['test']['f1_weighted']:.3f}")
    print(f"retrain (+{a.new:.0%} new) {t_inc:7.1f} s  features computed {r_inc.features_computed:6d}, "
          f"cached {r_inc.features_cached}  test F1 {r_inc.metrics['test']['f1_weighted']:.3f}")
    print(f"retrain / full time ratio: {t_inc / t_full:.2f}")


if __name__ == "__main__":
    main()
