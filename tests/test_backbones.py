"""The registry, preprocessing inside the model, the input-range preflight, and weights resolution."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from scene.model import backbones
from scene.model.backbones import BACKBONES, InputRangeError, Preprocess, WeightsUnavailable, get_spec, preflight

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


def _keras_layout_file(name: str, size: int, folder: Path) -> Path:
    """A notop weights file in the legacy HDF5 layout Keras' own ImageNet files use (random, seeded values)."""
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    spec = get_spec(name)
    keras.utils.set_random_seed(7)
    donor = spec.constructor(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    rng = np.random.default_rng(7)  # BatchNorm statistics like a trained network's: the input scale matters
    for layer in donor.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n), rng.normal(0, 1.0, n),
                               rng.uniform(0.2, 2.0, n)])
    path = folder / spec.weights_file(size)
    with h5py.File(path, "w") as f:
        save_weights_to_hdf5_group(f, donor)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(KERAS_PREPROCESS))
def test_features_match_keras_own_imagenet_graph(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scene's extractor == Keras' ``weights="imagenet"`` graph + Keras' preprocess_input, same weights file.

    Keras' download is pointed at the local file; EfficientNet's imagenet graph has an extra input Rescaling
    that a ``weights=None`` build lacks (features differed by 57% before scene built it the imagenet way).
    """
    from keras.src.utils import file_utils

    size = 32
    path = _keras_layout_file(name, size, tmp_path)
    x = np.random.default_rng(5).uniform(0, 255, (3, size, size, 3)).astype("float32")
    ours = backbones.feature_extractor(name, size, backbones.resolve_weights(get_spec(name), str(path), size))
    ours_out = np.asarray(ours.predict_on_batch(x))
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: str(path))
    ref = get_spec(name).constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3),
                                     pooling="avg")
    ref_out = np.asarray(ref.predict_on_batch(KERAS_PREPROCESS[name](x.copy())))
    scale = np.abs(ref_out).max()
    assert scale > 0
    np.testing.assert_allclose(ours_out, ref_out, atol=1e-4 * scale, rtol=1e-4)


def test_random_init_builds_are_seeded() -> None:
    """Two builds with the same seed are the same network; another seed is another network."""
    w = backbones.resolve_weights(get_spec("mobilenetv2"), "none", 32, seed=3)
    a = backbones.build_backbone("mobilenetv2", 32, w, seed=3).get_weights()
    b = backbones.build_backbone("mobilenetv2", 32, w, seed=3).get_weights()
    c = backbones.build_backbone("mobilenetv2", 32, w, seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_imagenet_fingerprint_is_the_file_content(tmp_path: Path) -> None:
    """Two Keras caches holding different bytes under the same file name are different weights."""
    spec = get_spec("mobilenetv2")  # Keras publishes no hash for MobileNetV2 files: any content is accepted
    fingerprints = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / spec.weights_file(150)).write_bytes(f"weights {i}".encode())
        fingerprints.append(backbones.resolve_weights(spec, "imagenet", 150, local_cache=tmp_path / str(i)).fingerprint)
    assert fingerprints[0] != fingerprints[1]


def test_imagenet_file_with_the_wrong_hash_is_refused(tmp_path: Path) -> None:
    """A Keras-cache file whose content is not Keras' published file is not used as ImageNet weights."""
    spec = get_spec("vgg16")
    (tmp_path / spec.weights_file(150)).write_bytes(b"not the real vgg16 file")
    with pytest.raises(WeightsUnavailable, match="hash is not Keras'"):
        backbones.resolve_weights(spec, "imagenet", 150, local_cache=tmp_path)


def test_feature_namespace_holds_everything_that_changes_a_feature(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from scene.model.pipeline import AugmentConfig
    from scene.train import features

    w = backbones.resolve_weights(get_spec("mobilenetv2"), "none", 64, seed=1)
    base = features.namespace("mobilenetv2", w, 64, AugmentConfig(), 1, "float32")
    assert features.namespace("mobilenetv2", w, 64, AugmentConfig(), 1, "mixed_float16") != base
    monkeypatch.setattr(keras, "__version__", "9.9.9")
    assert features.namespace("mobilenetv2", w, 64, AugmentConfig(), 1, "float32") != base
    monkeypatch.undo()
    monkeypatch.setattr(features, "source_hash", lambda modules=features.FEATURE_MODULES: "changed-code")
    assert features.namespace("mobilenetv2", w, 64, AugmentConfig(), 1, "float32") != base
    monkeypatch.undo()
    assert features.namespace("mobilenetv2", w, 64, AugmentConfig(), 1, "float32") == base


def test_the_code_hash_is_read_once_so_a_run_keeps_one_namespace_when_files_change(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """A run writes features under the namespace of the code it loaded and reads them back under the same one, even
    when the source files change in between (an edit or a deploy while it runs made the reader miss every key)."""
    from scene.train import features

    (tmp_path / "scene_hash_probe.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = features.source_hash(("scene_hash_probe",))
    (tmp_path / "scene_hash_probe.py").write_text("X = 2\n")
    assert features.source_hash(("scene_hash_probe",)) == first
    features.source_hash.cache_clear()  # a new process reads the changed file
    assert features.source_hash(("scene_hash_probe",)) != first
