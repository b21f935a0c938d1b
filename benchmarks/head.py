"""Benchmark: head training speed on cached features — scene's ``fit_head`` (in-memory tf.data, several steps per
compiled call) vs a plain ``model.fit`` on NumPy arrays (one step per call, as before issue 8), same head, same
batch size (64), alternating in one process. Prints epochs/s for each and their ratio.

    .venv/bin/python benchmarks/head.py [--vectors 11200] [--width 1280] [--epochs 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=11200)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--epochs", type=int, default=5)
    a = p.parse_args()

    import keras
    import numpy as np

    from scene.model.network import build_head, compile_model
    from scene.train.fit import TrainConfig, fit_head

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, a.vectors)
    x = (rng.normal(0, 1, (6, a.width))[y] + rng.normal(0, 2, (a.vectors, a.width))).astype(np.float32)
    val = slice(0, a.vectors // 4)
    cfg = TrainConfig(backbone="mobilenetv2", weights="none", epochs=a.epochs, patience=a.epochs)

    def plain() -> float:
        head = build_head(a.width, 6)
        compile_model(head, cfg.learning_rate)
        onehot = keras.utils.to_categorical
        start = time.perf_counter()
        head.fit(x, onehot(y, 6), validation_data=(x[val], onehot(y[val], 6)), epochs=a.epochs, batch_size=64,
                 shuffle=True, verbose=0)
        return a.epochs / (time.perf_counter() - start)

    def scene() -> float:
        return fit_head(build_head(a.width, 6), (x, y), (x[val], y[val]), cfg).attrs["epochs_per_s"]

    rates: dict[str, list[float]] = {"plain model.fit": [], "scene fit_head": []}
    for _ in range(2):
        rates["plain model.fit"].append(plain())
        rates["scene fit_head"].append(scene())
    print(f"{a.vectors} vectors of {a.width} floats, batch 64, {a.epochs} epochs per run, 2 runs each (alternating)")
    for name, r in rates.items():
        print(f"  {name:16s} {np.mean(r):5.2f} epochs/s  ({', '.join(f'{v:.2f}' for v in r)})")
    print(f"  ratio: {np.mean(rates['scene fit_head']) / np.mean(rates['plain model.fit']):.2f}x")


if __name__ == "__main__":
    main()
