"""The registry, preprocessing inside the model, the input-range preflight, and weights resolution."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from scene import backbones
from scene.backbones import BACKBONES, InputRangeError, Preprocess, WeightsUnavailable, get_spec, preflight

KERAS_PREPROCESS = {
    "resnet50": keras.applications.resnet50.preprocess_input,
    "resnet101": keras.applications.resnet.preprocess_input,
    "resnet101v2": keras.applications.resnet_v2.preprocess_input,
    "efficientnetb0": keras.applications.efficientnet.preprocess_input,
    "vgg16": keras.applications.vgg16.preprocess_input,
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
}


def test_registry_has_the_six_backbones() -> None:
    assert set(BACKBONES) == set(KERAS_PREPROCESS)


@pytest.mark.parametrize("name", sorted(KERAS_PREPROCESS))
def test_preprocess_layer_matches_keras_preprocess_input(name: str) -> None:
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(Preprocess(get_spec(name).preprocess)(x))
    np.testing.assert_allclose(ours, KERAS_PREPROCESS[name](x.copy()), atol=1e-4)
    lo, hi = get_spec(name).input_range
    assert lo - 1e-3 <= ours.min() and ours.max() <= hi + 1e-3


@pytest.mark.parametrize("name", sorted(KERAS_PREPROCESS))
def test_preflight_accepts_0_255_and_rejects_0_1(name: str) -> None:
    x = np.random.default_rng(1).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    preflight(name, x)
    with pytest.raises(InputRangeError, match=f"backbone {name} expects"):
        preflight(name, x / 255.0)


def test_the_seed_bug_is_caught_for_efficientnetb0() -> None:
    """The seed fed 0–1 pixels to EfficientNetB0, which rescales 0–255 itself: F1 0.076."""
    x = np.random.default_rng(2).uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    with pytest.raises(InputRangeError, match=r"\[0, 255\].*do not rescale to 0–1"):
        preflight("efficientnetb0", x)


@pytest.mark.parametrize(("name", "width"), [(n, s.feature_width) for n, s in sorted(BACKBONES.items())])
def test_every_backbone_builds_with_random_weights(name: str, width: int) -> None:
    w = backbones.resolve_weights(get_spec(name), "none", 32)
    model = backbones.feature_extractor(name, 32, w)
    out = model(np.zeros((1, 32, 32, 3), "float32"))
    assert out.shape == (1, width)
    assert not any(layer.trainable for layer in model.layers if isinstance(layer, keras.Model))


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        get_spec("alexnet")


def test_imagenet_unavailable_says_which_file_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable) as err:
        backbones.resolve_weights(get_spec("vgg16"), "imagenet", 150, local_cache=tmp_path)
    msg = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(tmp_path) in msg and "scene weights mirror" in msg and "--weights" in msg


def test_imagenet_found_in_the_keras_cache(tmp_path: Path, mobilenet_weights: Path) -> None:
    import shutil

    fname = get_spec("mobilenetv2").weights_file(150)
    assert fname.endswith("_224_no_top.h5")
    shutil.copy(mobilenet_weights, tmp_path / fname)
    w = backbones.resolve_weights(get_spec("mobilenetv2"), "imagenet", 150, local_cache=tmp_path)
    assert w.kind == "imagenet" and "keras cache" in w.origin


def test_missing_weights_file_is_named() -> None:
    with pytest.raises(WeightsUnavailable, match="no such file"):
        backbones.resolve_weights(get_spec("resnet50"), "/nope/w.weights.h5", 150)


def test_weights_file_that_does_not_fit_is_explained(mobilenet_weights: Path) -> None:
    w = backbones.resolve_weights(get_spec("efficientnetb0"), str(mobilenet_weights), 64)
    with pytest.raises(WeightsUnavailable, match="does not fit efficientnetb0"):
        backbones.build_backbone("efficientnetb0", 64, w)


def test_offline_imagenet_weights_give_real_features(mobilenet_weights: Path) -> None:
    """Pretrained and random MobileNetV2 features differ: the file really loads."""
    spec = get_spec("mobilenetv2")
    x = np.random.default_rng(3).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    pre = backbones.feature_extractor("mobilenetv2", 96, backbones.resolve_weights(spec, str(mobilenet_weights), 96))
    rnd = backbones.feature_extractor("mobilenetv2", 96, backbones.resolve_weights(spec, "none", 96))
    assert not np.allclose(np.asarray(pre(x)), np.asarray(rnd(x)))
