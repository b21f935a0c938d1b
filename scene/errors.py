"""User-facing error types, importable without TensorFlow (the CLI catches these).

:class:`SceneError` is the base of every error the library raises on purpose (bad data, missing weights, a failed
run…): ``except scene.SceneError`` catches them all and nothing else. Each type also keeps its old built-in base
(``ValueError``, ``RuntimeError``), so existing ``except`` clauses still match.
"""

from __future__ import annotations

from typing import Any


class SceneError(Exception):
    """Base of the errors scene raises on purpose; the message names the input and what to pass instead."""


class ParamsError(SceneError, ValueError):
    """A training option has a bad value (an unknown backbone, a preset that does not exist, a negative epoch)."""


class DataValidationError(SceneError, ValueError):
    """The data failed validation; nothing was trained. ``report``: the validation report (its ``failures()``)."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class TrainingError(SceneError, RuntimeError):
    """A backbone's training failed. The message names the backbone and the cause (also ``__cause__``);
    ``results``: the :class:`~scene.train.experiment.TrainResult` of every backbone of the run, failed ones
    included (``status == "failed"``); ``backbone``: the first that failed."""

    def __init__(self, message: str, results: list[Any] | None = None, backbone: str = "") -> None:
        super().__init__(message)
        self.results = list(results or [])
        self.backbone = backbone


class WeightsUnavailable(SceneError, RuntimeError):
    """ImageNet weights could not be found or downloaded; the message says which file to put where."""


class InputRangeError(SceneError, ValueError):
    """The tensors reaching a backbone are outside the range it was trained on."""


class ModelLoadError(SceneError, ValueError):
    """A saved model that must not or cannot be loaded (unsafe code inside, truncated file); the message names it."""
