"""An offline "imagenet" for tests: MobileNetV2 weights under Keras' own cache file name in a temporary KERAS_HOME.

``weights="imagenet"`` then resolves exactly as on a user's machine (:func:`scene.model.backbones.resolve_weights`:
the Keras cache is tried first, no network), with weights that are not ImageNet's: the calibrated MobileNetV2 of
:func:`tests.support.hues.calibrated_mobilenetv2` (seeded kernels, BatchNorm statistics from flat colour images), so
the one-hue-per-class images of :func:`tests.support.hues.draw_hues` are easy to learn.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.hues import calibrated_mobilenetv2


def _keras_file(size: int) -> str:
    from scene.model.backbones import get_spec

    return get_spec("mobilenetv2").weights_file(size)


def imagenet_cache(tmp_path: Path, size: int = 32) -> dict[str, str]:
    """Environment variables (``KERAS_HOME``) under which ``weights="imagenet"`` for ``mobilenetv2`` at ``size`` px
    loads offline, from ``<tmp_path>/keras-home/models/<Keras' file name>``. For a subprocess (Keras reads
    ``KERAS_HOME`` when it is imported); in this process use :func:`use_imagenet_cache`."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    home = tmp_path / "keras-home"
    target = home / "models" / _keras_file(size)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3),
                                               pooling="avg")
        model.load_weights(calibrated_mobilenetv2(tmp_path, size, batch=16))
        with h5py.File(target, "w") as f:  # Keras' ImageNet files are legacy HDF5 (what load_weights reads for .h5)
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return {"KERAS_HOME": str(home)}


def use_imagenet_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int = 32) -> Path:
    """:func:`imagenet_cache` for this process: ``KERAS_HOME`` set and Keras' home (read at its import) pointed at
    it, both undone after the test; returns the cached weights file."""
    env = imagenet_cache(tmp_path, size)
    from keras.src.backend import config

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_KERAS_DIR", env["KERAS_HOME"])
    return Path(env["KERAS_HOME"]) / "models" / _keras_file(size)
