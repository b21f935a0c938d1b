"""Benchmark: the ``cached`` strategy (features once, head on features) vs ``online`` (the seed's way: backbone in
the loop, augmentation applied afresh every epoch).

Both train MobileNetV2 (real offline ImageNet weights) on the same stratified subset of the real Intel photos, in
one process, one after the other, and are scored on the same held-out images by their saved models. The online
run trains ``--online-epochs`` epochs; its per-epoch time (epochs after the first, which also traces) is measured
and its wall time projected to ``--project-epochs`` (the seed trained 50–100). Reported as ratios, because this
machine is shared and noisy.

    .venv/bin/python benchmarks/cached_vs_online.py [--per-class 150] [--online-epochs 3] [--project-epochs 50]
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
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--online-epochs", type=int, default=3)
    p.add_argument("--project-epochs", type=int, default=50)
    p.add_argument("--image-size", type=int, default=150)
    a = p.parse_args()

    import keras

    from scene.data.dataset import Dataset, build_dataset, fingerprint
    from scene.train import fit as train_mod
    from scene.train.experiment import evaluate_all
    from scene.train.fit import TrainConfig, all_predictions, fit

    full = build_dataset(str(INTEL))
    sub = full.manifest.groupby("label").head(a.per_class).reset_index(drop=True)
    ds = Dataset(sub, full.rejected, full.class_names, str(INTEL), None, fingerprint(sub))
    print(f"{len(sub)} images: " + ", ".join(f"{s} {len(ds.split(s))}" for s in ("train", "val", "test")))

    ends: list[float] = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            ends.append(time.perf_counter())

    real_callbacks = train_mod._callbacks
    train_mod._callbacks = lambda *args: [*real_callbacks(*args), EpochClock()]  # time each online epoch
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("cached, views 0", {"views": 0}), ("cached, views 2", {"views": 2}),
                ("online", {"strategy": "online", "epochs": a.online_epochs, "patience": a.online_epochs})]
        for name, extra in runs:
            cfg = TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), image_size=a.image_size, **extra)
            ends.clear()
            start = time.perf_counter()
            fitted = fit(ds, cfg, Path(tmp) / name.replace(" ", "").replace(",", "-"), cache_root=f"{tmp}/cache-{name}")
            seconds = time.perf_counter() - start
            if cfg.strategy == "online":  # first epoch (incl. tracing) + the measured steady epochs, projected
                per_epoch = (ends[-1] - ends[0]) / max(1, len(ends) - 1)
                seconds = (ends[0] - start) + per_epoch * (a.project_epochs - 1)
                print(f"online: {len(ends)} epochs measured, {per_epoch:.1f} s per epoch after the first; "
                      f"projected to {a.project_epochs} epochs: {seconds:.0f} s")
            m = evaluate_all(all_predictions(ds, cfg, fitted, cache_root=f"{tmp}/cache-{name}"), ds.class_names,
                             bootstrap=1000)["test"]
            rows[name] = (seconds, m.f1_weighted)
            print(f"{name:16s} {seconds:7.1f} s  {len(fitted.history):3d} epochs  test F1 {m.f1_weighted:.3f} "
                  f"[{m.ci['f1_weighted'][0]:.3f}, {m.ci['f1_weighted'][1]:.3f}]", flush=True)
    t_online, f_online = rows["online"]
    for name in ("cached, views 0", "cached, views 2"):
        t, f1 = rows[name]
        print(f"online ({a.project_epochs} epochs, projected) / {name}: {t_online / t:.1f}x wall time; "
              f"test F1 {name} - online ({a.online_epochs} epochs): {f1 - f_online:+.3f}")


if __name__ == "__main__":
    main()
