"""scene: transfer-learning scene classifiers (Intel Image Classification), trained and retrained with Prefect.

The Python API (:mod:`scene.api`)::

    import scene

    run = scene.train("photos/", out="runs/first", backbones=["mobilenetv2"], epochs=30)
    run.table                                         # pandas DataFrame, one row per backbone
    scores = scene.evaluate(run.best.model_path, "photos_test/")
    preds = scene.predict(run.best.model_path, "new_photos/")

``import scene`` is cheap and changes nothing global: every name below loads its module on first use (no
TensorFlow until a function that needs it runs).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {  # name -> the module that defines it (imported on first access)
    "train": "scene.train",  # the package scene.train is callable: scene.train(...) is scene.api.train(...)
    "evaluate": "scene.api",
    "predict": "scene.api",
    "load_data": "scene.api",
    "champion_model": "scene.api",
    "TrainRun": "scene.api",
    "TrainResult": "scene.train.experiment",
    "Settings": "scene.settings",
    "SceneError": "scene.errors",
    "ParamsError": "scene.errors",
    "DataValidationError": "scene.errors",
    "TrainingError": "scene.errors",
    "WeightsUnavailable": "scene.errors",
    "ModelLoadError": "scene.errors",
    "DatasetError": "scene.data.dataset",
    "StorageError": "scene.data.storage",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Load an exported name's module on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scene' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "train" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
