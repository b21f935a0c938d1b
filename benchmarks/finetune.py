"""Fine-tuning ablation on the validation split only (issue 26): which blocks, peak learning rate, epochs and
label smoothing, weight averaging and input size.

    .venv/bin/python benchmarks/finetune.py DATA --weights W.weights.h5 [--size 224] [--grid 2:1e-4:3,4:1e-4:3:0.1]
        [--out /tmp/ft] [--limit N]

``--grid ""`` scores the frozen phase alone (compare input sizes with one run per ``--size``). ``--frozen DIR``
starts every row from the frozen phase an earlier run saved (``DIR/frozen.keras`` and its ``history.csv``) instead
of training it again. A sixth grid field is the fine-tuning seed (data order, augmentation; default 42).
``--include NAME=MODEL.keras`` adds a model fine-tuned earlier (on train only) to the ensembles: after the grid, every
pair of fine-tuned models is scored on val as the average of their probabilities (mirror averages).

Trains the frozen phase once (MobileNetV2, ``--size`` px, mirror view, no refit: ``best-cpu`` without the refit,
which would train on val), then for every ``blocks:lr:epochs[:label_smoothing[:ema[:seed]]]`` in ``--grid`` fine-tunes a
copy of it (warm-up of half an epoch, cosine decay, BatchNorm frozen, online augmentation, plain view; the saved
model keeps the mirror) and scores the saved model on validation twice: as saved (the mean over image and mirror,
``finetune_mirror`` True) and through its plain path alone (``finetune_mirror`` False), same weights. The test split
is never read: the script drops it before anything trains.
Prints one row per setting (both val weighted F1s, best epoch, seconds, training img/s) and writes ``ablation.csv``
and each run's ``history.csv`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--weights", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--grid", default="2:1e-4:3")
    p.add_argument("--out", default="/tmp/finetune-ablation")
    p.add_argument("--cache", default=str(Path.home() / ".cache/scene/features"))
    p.add_argument("--limit", type=int, default=0, help="use only the first N training images (a smoke run)")
    p.add_argument("--frozen", default="", help="a folder with frozen.keras + history.csv to start from")
    p.add_argument("--include", action="append", default=[], help="NAME=MODEL.keras: one more ensemble member")
    a = p.parse_args()

    import itertools

    import numpy as np
    import pandas as pd
    from sklearn.metrics import f1_score

    from scene.data.dataset import build_dataset
    from scene.model.network import load, plain_view
    from scene.model.predict import predict
    from scene.train.fit import FitResult, TrainConfig, finetune, fit_frozen, weights_for

    ds = build_dataset(a.data)
    manifest = ds.manifest[ds.manifest["split"] != "test"]  # never read: settings are chosen on val only
    if a.limit:
        train, val = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
        manifest = pd.concat([train.head(a.limit), val.head(a.limit // 4)])
    ds = dataclasses.replace(ds, manifest=manifest.reset_index(drop=True))
    print(f"train {len(ds.split('train'))}, val {len(ds.split('val'))} images; test dropped")
    out = Path(a.out)
    base = TrainConfig(backbone="mobilenetv2", weights=a.weights, image_size=a.size, views=0, mirror=True, epochs=100,
                       finetune_blocks=1)  # finetune_blocks > 0: the frozen phase saves frozen.keras
    weights = weights_for(base)
    start = time.perf_counter()
    if a.frozen:
        history = pd.read_csv(Path(a.frozen) / "history.csv")
        frozen = FitResult(Path(a.frozen) / "frozen.keras", history, weights, None, 0.0)
    else:
        frozen = fit_frozen(ds, base, out / "frozen", weights, cache_root=a.cache)
    val = ds.split("val")
    y = val["label_index"].to_numpy()
    val_probs: dict[str, np.ndarray] = {}  # fine-tuned model -> its val probabilities as saved (mirror average)

    def f1(probs: np.ndarray) -> float:
        return float(f1_score(y, probs.argmax(1), average="weighted"))

    def val_f1(model_path: Path, name: str = "") -> dict[str, float]:
        model = load(str(model_path))
        probs = predict(model, val, a.size).probs
        if name:
            val_probs[name] = probs
        return {"val_f1": f1(probs), "val_f1_plain": f1(predict(plain_view(model), val, a.size).probs)}

    for item in a.include:
        name, path = item.split("=", 1)
        print(name, val_f1(Path(path), name), flush=True)

    rows = [{"setting": f"frozen (best-cpu without refit), {a.size} px", "blocks": 0, "lr": 0.0, "epochs": 0,
             **val_f1(frozen.model_path), "best_epoch": int(frozen.history["val_loss"].argmin()) + 1,
             "seconds": round(time.perf_counter() - start), "train_img_s": float("nan")}]
    print(rows[-1])
    for item in filter(None, a.grid.split(",")):
        parts = item.split(":")
        blocks, lr, epochs, smooth, ema, seed = parts + ["0", "0", str(base.seed)][len(parts) - 3:]
        cfg = dataclasses.replace(base, finetune_blocks=int(blocks), finetune_lr=float(lr),
                                  finetune_epochs=int(epochs), finetune_label_smoothing=float(smooth),
                                  finetune_ema=float(ema), seed=int(seed))
        run_dir = out / (f"b{blocks}_lr{lr}_e{epochs}_ls{smooth}_ema{ema}" + (f"_s{seed}" if int(seed) != base.seed
                                                                               else ""))
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(frozen.model_path, run_dir / "frozen.keras")
        start = time.perf_counter()
        tuned = finetune(ds, cfg, dataclasses.replace(frozen, model_path=run_dir / "frozen.keras"))
        seconds = time.perf_counter() - start
        ft = tuned.history[tuned.history["phase"] == "finetune"]
        rows.append({"setting": f"top {blocks} blocks, lr {lr}, {epochs} epochs, smoothing {smooth}, ema {ema}, "
                                f"seed {seed}",
                     "blocks": int(blocks), "lr": float(lr), "epochs": int(epochs), "label_smoothing": float(smooth),
                     "ema": float(ema), "seed": int(seed),
                     **val_f1(tuned.model_path, run_dir.name),
                     "best_epoch": int(ft["val_loss"].argmin()) + 1, "seconds": round(seconds),
                     "train_img_s": len(ds.split("train")) * len(ft) / seconds,
                     "val_acc_by_epoch": " ".join(f"{v:.3f}" for v in ft["val_accuracy"])})
        print(rows[-1], flush=True)
        pd.DataFrame(rows).to_csv(out / "ablation.csv", index=False)  # each row as it comes (a long grid)
    print(pd.DataFrame(rows).to_string(index=False))
    pairs = [{"ensemble": f"{m} + {n}", "val_f1": f1(val_probs[m] + val_probs[n]), "members": f"{f1(val_probs[m]):.4f} "
              f"{f1(val_probs[n]):.4f}"} for m, n in itertools.combinations(val_probs, 2)]
    if pairs:
        pd.DataFrame(pairs).to_csv(out / "ensembles.csv", index=False)
        print(pd.DataFrame(pairs).to_string(index=False))


if __name__ == "__main__":
    main()
