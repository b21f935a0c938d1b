"""Keep TensorFlow's start-up noise off the terminal, and only that.

TensorFlow 2.21 writes ``WARNING: All log messages before absl::InitializeLog() is called ...`` (twice) when it is
imported, and on a machine without a usable GPU a ``failed call to cuInit`` error when it first lists devices;
``TF_CPP_MIN_LOG_LEVEL`` hides neither, because they come from C++ before its logging is set up. :func:`install`
puts an import hook in place that, on the first ``import tensorflow`` (wherever it happens), points file
descriptor 2 at a temporary file while TensorFlow loads and lists its devices, then writes back every captured
line that is not known start-up noise, so real warnings and errors still reach stderr. Nothing hides GPUs.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

# the lines TensorFlow / XLA / CUDA stubs print at start-up that say nothing a user can act on
NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"cudart_stub\.cc.*Could not find cuda drivers",
    r"cuda_platform\.cc.*failed call to cuInit",
    r"failed call to cuInit",
    r"cpu_feature_guard\.cc",
    r"^To enable the following instructions:.*rebuild TensorFlow",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"oneDNN custom operations are on",
]))


def keep(lines: Sequence[str]) -> list[str]:
    """The captured lines that are not start-up noise."""
    return [ln for ln in lines if ln.strip() and not NOISE.search(ln)]


@contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture what is written to fd 2 (C++ and Python alike) and pass on all but the noise afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            rest = keep(sink.read().decode(errors="replace").splitlines())
            if rest:
                print("\n".join(rest), file=sys.stderr, flush=True)


class _QuietLoader(importlib.abc.Loader):
    """Wraps TensorFlow's loader: load (and initialise the device platforms) under :func:`filtered_stderr`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with filtered_stderr():
            self.inner.exec_module(module)
            # the cuInit error is printed the first time devices are listed: do that now, filtered; a real device
            # problem is reported again, unfiltered, when the code uses the device
            with contextlib.suppress(Exception):
                module.config.list_physical_devices()


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and wraps its loader; then steps aside."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        uninstall()
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


_FINDER = _Finder()


def install() -> None:
    """Filter TensorFlow's start-up noise when it is first imported (no-op when it already is)."""
    if "tensorflow" not in sys.modules and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the import hook (``--verbose``)."""
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
