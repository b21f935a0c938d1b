"""Benchmark: one fine-tuning step at float32 against Keras' mixed_bfloat16 policy (issue 26), interleaved.

    .venv/bin/python benchmarks/finetune_step.py --weights mobilenet_v2_imagenet_notop.weights.h5 [--size 224]
        [--blocks 5,16] [--batch 32] [--rounds 4] [--steps 4]

MobileNetV2 with the shipped weights and a small softmax head, the top ``--blocks`` whole blocks trainable and
BatchNorm frozen (:func:`scene.model.network.unfreeze_blocks`, as the ``finetune`` stage does), Adam, one batch of
``--batch`` images: two models built under each policy, warmed up, then ``--steps`` training steps on each in turn,
``--rounds`` times. Prints training img/s per round and the median ratio bf16/f32 (above 1: BF16 is faster). A
policy only earns its paired accuracy test (docs/benchmarks.md#fine-tuning) when it is faster here.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--blocks", default="5,16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    a = p.parse_args()

    import time

    import keras
    import numpy as np

    from scene.model import network, runtime

    runtime.configure_threads()

    def build(policy: str, blocks: int) -> keras.Model:
        keras.mixed_precision.set_global_policy(policy)
        try:
            base = keras.applications.MobileNetV2(input_shape=(a.size, a.size, 3), include_top=False, pooling="avg",
                                                  weights=None)
            base.load_weights(a.weights)
            x = keras.Input((a.size, a.size, 3))
            hidden = keras.layers.Dense(256, activation="relu")(base(x, training=False))
            model = keras.Model(x, keras.layers.Dense(6, activation="softmax", dtype="float32")(hidden))
            network.unfreeze_blocks(model, blocks)
            network.compile_model(model, 1e-4)
            return model
        finally:
            keras.mixed_precision.set_global_policy("float32")

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (a.batch, a.size, a.size, 3)).astype(np.float32)
    y = np.eye(6, dtype=np.float32)[rng.integers(0, 6, a.batch)]
    for blocks in (int(b) for b in a.blocks.split(",")):
        models = {policy: build(policy, blocks) for policy in ("float32", "mixed_bfloat16")}
        for model in models.values():
            for _ in range(2):
                model.train_on_batch(x, y)
        speed: dict[str, list[float]] = {policy: [] for policy in models}
        for _ in range(a.rounds):
            for policy, model in models.items():
                start = time.perf_counter()
                for _ in range(a.steps):
                    model.train_on_batch(x, y)
                speed[policy].append(a.steps * a.batch / (time.perf_counter() - start))
        ratio = float(np.median(np.array(speed["mixed_bfloat16"]) / np.array(speed["float32"])))
        for policy, values in speed.items():
            print(f"top {blocks} blocks, {a.size} px, batch {a.batch}, {policy}: training img/s "
                  f"{' '.join(f'{v:.1f}' for v in values)}")
        print(f"top {blocks} blocks: bf16/f32 {ratio:.2f}x (median of {a.rounds} interleaved rounds)", flush=True)


if __name__ == "__main__":
    main()
