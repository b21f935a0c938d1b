"""The classification head, the full saved model, and the named training phases.

Full model: raw RGB [0, 255] → :class:`~scene.model.backbones.Preprocess` → backbone (``training=False``,
global average pooling) → head. The head is a small model of its own, so the ``cached`` strategy can
train it on stored features and then drop it, unchanged, on top of the backbone. An ensemble (:func:`ensemble`)
wraps several such models and averages their probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras

from scene.model import runtime
from scene.model.backbones import Preprocess, WeightsSource, get_spec, shared_backbone


@dataclass(frozen=True)
class HeadConfig:
    """The seed's head, kept: GAP → Dense(ReLU, L2) → BatchNorm → Dropout → softmax."""

    hidden: int = 256  # units of the hidden ReLU layer
    l2: float = 1e-3  # L2 penalty on the hidden layer's kernel
    dropout: float = 0.2  # dropout after batch norm


def build_head(feature_width: int, num_classes: int, cfg: HeadConfig = HeadConfig()) -> keras.Model:
    """Pooled features → class probabilities (float32 output, also under mixed precision)."""
    runtime.configure_threads()
    inp = keras.Input((feature_width,), name="features")
    x = keras.layers.Dense(cfg.hidden, activation="relu", kernel_regularizer=keras.regularizers.L2(cfg.l2),
                           name="hidden")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inp, out, name="head")


@keras.saving.register_keras_serializable(package="scene")
class Mirror(keras.layers.Layer):
    """Horizontal flip of ``(batch, height, width, channels)`` images (deterministic, for test-time averaging)."""

    def call(self, x: Any) -> Any:
        return keras.ops.flip(x, axis=2)


def assemble(backbone_name: str, size: int, weights: WeightsSource, head: keras.Model, seed: int = 0, *,
             mirror: bool = False) -> keras.Model:
    """The full model users load: raw pixels in, probabilities out, preprocessing inside.

    The backbone is this process's shared instance (:func:`~scene.model.backbones.shared_backbone`): the very network
    that computed the cached features the head was trained on. ``mirror``: the model averages its probabilities
    over the image and its mirror image (test-time augmentation built into what ships; twice the compute).
    """
    spec = get_spec(backbone_name)
    inp = keras.Input((size, size, 3), name="image")
    backbone = shared_backbone(backbone_name, size, weights, seed)
    preprocess = Preprocess(spec.preprocess, name="preprocess")
    # BatchNorm stays in inference mode, also when fine-tuning
    probs = head(backbone(preprocess(inp), training=False))
    if mirror:
        mirrored = head(backbone(preprocess(Mirror(name="mirror")(inp)), training=False))
        probs = keras.layers.Average(name="mirror_average", dtype="float32")([probs, mirrored])
    return keras.Model(inp, probs, name=f"scene_{backbone_name}")


ENSEMBLE_AVERAGE = "ensemble_average"  # the layer that marks (and makes) an ensemble


def ensemble(members: Sequence[keras.Model], name: str) -> keras.Model:
    """One model over the same input that averages the probabilities of ``members`` (``member_0``, ``member_1``,
    ...: each keeps its own layers and weights; inference costs the sum of theirs)."""
    inp = keras.Input(members[0].input_shape[1:], name="image")
    wrapped = [keras.Model(m.input, m.output, name=f"member_{i}") for i, m in enumerate(members)]
    probs = keras.layers.Average(name=ENSEMBLE_AVERAGE, dtype="float32")([m(inp) for m in wrapped])
    return keras.Model(inp, probs, name=name)


def members(model: keras.Model) -> list[keras.Model]:
    """The networks an ensemble averages (:func:`ensemble`); ``[model]`` for a single network."""
    if ENSEMBLE_AVERAGE not in [layer.name for layer in model.layers]:
        return [model]
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model inside a full model."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "head")


def freeze_backbone(model: keras.Model) -> None:
    """Phase 1: only the head trains."""
    backbone_of(model).trainable = False


def unfreeze_top(model: keras.Model, n: int) -> int:
    """Phase 2: the top ``n`` layers of the backbone train, BatchNorm layers never; returns how many train.

    Recompile afterwards — trainability changes take effect only on compile.
    """
    backbone = backbone_of(model)
    if n <= 0:
        raise ValueError(f"unfreeze_top n={n}; pass a positive number of backbone layers to fine-tune")
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        top = i >= len(backbone.layers) - n
        layer.trainable = top and not isinstance(layer, keras.layers.BatchNormalization)
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


_BLOCK = re.compile(r"^(conv\d+_block\d+|block_?\d+[a-z]?)_")  # ResNet, MobileNetV2/EfficientNet/VGG block names


def backbone_blocks(backbone: keras.Model) -> list[list[keras.layers.Layer]]:
    """The backbone's layers grouped into its named blocks, bottom to top (``block_16``, ``conv5_block3``,
    ``block7a``, ``block5``). Layers before the first block form the stem; layers after the last block (the top
    convolution, ``Conv_1`` of MobileNetV2, ``top_conv`` of EfficientNet) join the last block."""
    groups: list[list[keras.layers.Layer]] = []
    names: list[str] = []
    for layer in backbone.layers:
        match = _BLOCK.match(layer.name)
        name = match.group(1) if match else (names[-1] if names else "stem")
        if not names or name != names[-1]:
            names.append(name)
            groups.append([])
        groups[-1].append(layer)
    return groups


def unfreeze_blocks(model: keras.Model, n: int) -> list[str]:
    """Phase 2 by whole blocks: the top ``n`` blocks of the backbone train (and the layers above them), BatchNorm
    layers never; returns the names of the blocks that train. Recompile afterwards."""
    if n <= 0:
        raise ValueError(f"unfreeze_blocks n={n}; pass a positive number of backbone blocks to fine-tune")
    backbone = backbone_of(model)
    blocks = [b for b in backbone_blocks(backbone) if not b[0].name.startswith("input")]
    if n > len(blocks):
        raise ValueError(f"unfreeze_blocks n={n}; {backbone.name} has {len(blocks)} blocks")
    top = {id(layer) for block in blocks[-n:] for layer in block}
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = id(layer) in top and not isinstance(layer, keras.layers.BatchNormalization)
    return [_BLOCK.match(b[0].name).group(1) if _BLOCK.match(b[0].name) else b[0].name for b in blocks[-n:]]


def plain_view(model: keras.Model) -> keras.Model:
    """The model's plain path (no mirror branch), sharing every layer with ``model``: training it trains ``model``.
    Fine-tuning a mirror model trains this (random flips stand in for the mirror) at half the compute."""
    if "mirror" not in [layer.name for layer in model.layers]:
        return model
    backbone, head, preprocess = backbone_of(model), model.get_layer("head"), model.get_layer("preprocess")
    return keras.Model(model.input, head(backbone(preprocess(model.input), training=False)), name=f"{model.name}_plain")


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0 by ``total_steps``."""
    if warmup_steps <= 0:
        return keras.optimizers.schedules.CosineDecay(peak, max(1, total_steps), alpha=0.0)
    return keras.optimizers.schedules.CosineDecay(0.0, max(1, total_steps - warmup_steps), alpha=0.0,
                                                  warmup_target=peak, warmup_steps=warmup_steps)


def compile_model(model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                  *, label_smoothing: float = 0.0, ema: float = 0.0) -> None:
    """Adam and categorical cross-entropy (its one-hot targets smoothed by ``label_smoothing``), with accuracy; with
    ``ema`` > 0 Adam also keeps an exponential moving average of the weights at that momentum per step."""
    averaging = {"use_ema": True, "ema_momentum": ema} if ema else {}
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, **averaging),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing), metrics=["accuracy"])


def load(path: str) -> keras.Model:
    """Load a saved scene model (registers the custom preprocessing layer) with ``safe_mode=True``.

    Raises :class:`~scene.errors.ModelLoadError` naming the file for a model that carries Python code (a ``Lambda``
    layer: loading it could run anything) and for a file that is not a complete ``.keras`` archive.
    """
    import zipfile
    from pathlib import Path

    from scene.errors import ModelLoadError

    runtime.configure_threads()
    try:
        return keras.models.load_model(path, custom_objects={"Preprocess": Preprocess, "Mirror": Mirror},
                                       compile=False, safe_mode=True)
    except ValueError as err:
        if "safe_mode" in str(err):
            raise ModelLoadError(f"{path}: refusing to load: it contains a Lambda layer (Python code that would run "
                                 "on load), which safe_mode forbids; scene models use registered layers only — "
                                 "rebuild it without Lambda layers") from err
        if Path(path).is_file() and not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path}: not a complete .keras archive ({Path(path).stat().st_size} bytes; "
                                 "truncated or corrupt); fetch it again or retrain") from err
        raise
