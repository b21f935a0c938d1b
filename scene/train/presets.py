"""Named training recipes: a preset fills every setting the user did not set.

``best-cpu`` is the best recipe measured for the shipped MobileNetV2 weights on a 2-core CPU (settings chosen on
the validation split of ``../shared/data/intel/seg_train``, never on its test split; see the README).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "best-cpu": {
        "backbones": ["mobilenetv2"],
        "image_size": 224,  # the photos (150 px) upsampled to the size MobileNetV2 was trained at
        "views": 0,  # no random augmentation: the mirror image is the one extra view
        "mirror": True,  # train on each image and its mirror; the shipped model averages over both
        "epochs": 100,
        "refit": True,  # val chose the epochs; the shipped head then trains on train + val (25% more photos)
    },
}


def get_preset(name: str) -> dict[str, Any]:
    """The settings of preset ``name``; a clear error listing the known presets otherwise."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def apply_preset(name: str | None, values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the preset's settings in place of every value still equal to its default.

    A setting the user changed from its default wins over the preset.
    """
    if not name:
        return dict(values)
    out = dict(values)
    for key, value in get_preset(name).items():
        if key not in defaults:
            raise ValueError(f"preset {name!r} sets {key!r}, which is not a parameter here")
        if out.get(key) == defaults[key]:
            out[key] = value
    return out
