"""TensorFlow's CPU allocator: its default (malloc) against BFC, which scene turns on (scene.model.runtime).

    .venv/bin/python benchmarks/allocator.py [--rounds 3] [--steps 8] [--weights FILE]

Each measurement is a fresh process (the allocator is chosen once per process), the two settings interleaved round
by round: a frozen MobileNetV2 forward pass at 150 px (batches of 64, what feature extraction and scoring run) and a
fine-tuning step at 224 px (batch 32, every layer trainable but BatchNorm, Adam: what the finetune stage runs). Prints
img/s, system CPU seconds and minor page faults per setting, the median of rounds, and BFC's ratio over the default.
The allocator is set the way scene sets it: by ``scene.model.runtime.configure_threads`` before the first op, or
``TF_CPU_ALLOCATOR_USE_BFC=false`` for TensorFlow's default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from scene.model import runtime
runtime.configure_threads()
import keras, tensorflow as tf
kind, steps, weights = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
size, batch = (150, 64) if kind == "forward" else (224, 32)
base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
if weights:
    base.load_weights(weights)
x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype("float32")
if kind == "forward":
    f = tf.function(lambda x: base(x, training=False))
    step = lambda: f(x).numpy()
else:
    for layer in base.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    model = keras.Sequential([base, keras.layers.Dense(6, activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    y = np.arange(batch) % 6
    step = lambda: model.train_on_batch(x, y)
for _ in range(2):
    step()
r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"img_s": batch * steps / dt, "sys_s": r1.ru_stime - r0.ru_stime,
                  "faults": r1.ru_minflt - r0.ru_minflt, "rss_mb": r1.ru_maxrss / 1024}))
"""


def measure(kind: str, allocator: str, steps: int, weights: str) -> dict[str, float]:
    """One fresh process's numbers for ``kind`` (forward | finetune) under ``allocator`` (default | bfc)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    if allocator == "default":
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "false"
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(steps), weights], env=env, capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--weights", default="", help="MobileNetV2 no-top weights (default: random init; speed is the "
                                                 "same, only the values differ)")
    a = p.parse_args()
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(a.rounds):
        for kind in ("forward", "finetune"):
            for allocator in ("default", "bfc"):
                got = measure(kind, allocator, a.steps, a.weights)
                runs.setdefault((kind, allocator), []).append(got)
                print(f"round {r + 1} {kind:8s} {allocator:7s} {got['img_s']:7.1f} img/s  sys {got['sys_s']:5.1f} s  "
                      f"faults {got['faults']:>9,d}  peak RSS {got['rss_mb']:6.0f} MB", flush=True)
    print("\nmedian of rounds:")
    for kind in ("forward", "finetune"):
        med = {al: {k: statistics.median(m[k] for m in runs[(kind, al)]) for k in runs[(kind, al)][0]}
               for al in ("default", "bfc")}
        ratios = [m["img_s"] / d["img_s"] for m, d in zip(runs[(kind, "bfc")], runs[(kind, "default")], strict=True)]
        print(f"{kind:8s} default {med['default']['img_s']:6.1f} img/s, bfc {med['bfc']['img_s']:6.1f} img/s: "
              f"{med['bfc']['img_s'] / med['default']['img_s']:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}); "
              f"faults {med['default']['faults']:,.0f} -> {med['bfc']['faults']:,.0f}; "
              f"peak RSS {med['default']['rss_mb']:.0f} -> {med['bfc']['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
