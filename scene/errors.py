"""User-facing error types, importable without TensorFlow (the CLI catches these)."""

from __future__ import annotations


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be found or downloaded; the message says which file to put where."""


class InputRangeError(ValueError):
    """The tensors reaching a backbone are outside the range it was trained on."""


class ModelLoadError(ValueError):
    """A saved model that must not or cannot be loaded (unsafe code inside, truncated file); the message names it."""
