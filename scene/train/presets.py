"""Named training recipes: a preset fills every setting the user did not set.

``best-cpu`` is the best recipe measured for the shipped MobileNetV2 weights on a 2-core CPU (settings chosen on
the validation split of the Intel training photos, never on their test split; docs/benchmarks.md). ``finetune-cpu``
adds fine-tuning of the top blocks to it, refit on train + validation (chosen the same way:
docs/benchmarks.md#fine-tuning).
"""

from __future__ import annotations

from typing import Any

# the frozen phase both CPU presets share
_FROZEN_CPU: dict[str, Any] = {
    "backbones": ["mobilenetv2"],
    "image_size": 224,  # the photos (150 px) upsampled to the size MobileNetV2 was trained at
    "views": 0,  # no random augmentation: the mirror image is the one extra view
    "mirror": True,  # train on each image and its mirror; the shipped model averages over both
    "epochs": 100,
}

PRESETS: dict[str, dict[str, Any]] = {
    "best-cpu": {
        **_FROZEN_CPU,
        "refit": True,  # val chose the epochs; the shipped head then trains on train + val (25% more photos)
    },
    "finetune-cpu": {  # the frozen phase without the head's refit (the fine-tuning stops early on val), then:
        **_FROZEN_CPU,
        "finetune_blocks": 8,  # the top whole blocks train, BatchNorm frozen, on online-augmented photos
        "finetune_lr": 1e-4,  # peak learning rate after half an epoch of warm-up, then cosine decay to 0
        "finetune_epochs": 8,  # 8 blocks beat 5 (with or without label smoothing) and 5 at 2e-4 on val
        # finetune_mirror stays True: the mirror average won on val for 8 blocks (0.938 vs 0.936 plain path)
        # finetune_ema stays 0: weight averaging at 0.99 / 0.998 scored 0.935 / 0.932 against 0.935 without on val
        "finetune_refit": True,  # val chose the epochs; the shipped network tunes again on train + val (25% more)
        # ship the average of the selection and refit networks: on val a pair differing only by seed scored 0.937
        # against 0.935 / 0.922 alone, and 6 of 6 pairs of fine-tuned networks beat their better member
        "finetune_ensemble": True,
    },
}


def get_preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name``; a clear error listing the known presets otherwise."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
