"""Images a transfer-learning model can learn fast (one hue per class) and the calibrated weights that see them."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

from scene.metadata import CLASS_NAMES


def calibrated_mobilenetv2(folder: Path, size: int, seed: int = 7, batch: int = 64) -> str:
    """A MobileNetV2 notop weights file: seeded random kernels, BatchNorm statistics set from flat colour images.

    Passed as ``params.weights`` (a weights *file*, so the model is not random-init and the gate may promote it);
    its features of the :func:`draw_hues` images are not degenerate. Same ``(size, seed, batch)``, same file.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3),
                                           pooling="avg")
    rng = np.random.default_rng(seed)
    x = np.clip(rng.uniform(0, 255, (batch, 1, 1, 3)) + rng.normal(0, 12, (batch, size, size, 3)), 0, 255)
    x = x / 127.5 - 1
    for layer in model.layers:  # one training-mode pass with momentum 0 sets moving stats to this batch's statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x.astype("float32"), training=True)
    path = folder / "mobilenetv2-calibrated.weights.h5"
    model.save_weights(path)
    return str(path)


def draw_hues(out: Path, shift: int, *, size: int, per_class: int, seed: int = 5,
              name: str = "hue{c}_{i:02d}.jpg") -> Path:
    """``out/<class>/<name>``: hue c (of 6) is filed under class ``(c + shift) % 6``; ``name`` is formatted with the
    hue ``c`` and the image number ``i``.

    Drawn here (one hue per class, faint noise), not by :mod:`scene.data.synth`, so the images carry no synthetic
    mark and the gate's synthetic-data rule does not apply. The random draws do not depend on ``shift``: the same
    ``seed`` gives byte-identical images for every shift (only their folder changes), which is what keeps a
    relabelled dataset's test images paired with the old one's.
    """
    rng = np.random.default_rng(seed)
    for c in range(len(CLASS_NAMES)):
        rgb = np.array(colorsys.hsv_to_rgb(c / len(CLASS_NAMES), 0.85, 0.9)) * 255
        folder = out / CLASS_NAMES[(c + shift) % len(CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(rgb + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / name.format(c=c, i=i), quality=95)
    return out
