"""Training: the typed parameters (:mod:`~scene.train.params`, :mod:`~scene.train.presets`), the feature cache
(:mod:`~scene.train.features`), fitting (:mod:`~scene.train.fit`), the per-backbone pipeline's stages
(:mod:`~scene.train.stages`) and writing a run (:mod:`~scene.train.experiment`).

This package is also callable: ``scene.train(data, out=..., ...)`` is :func:`scene.api.train` (the package and the
API function share the name ``scene.train``; Python binds a package's submodules to its parent's attribute, so the
package itself answers the call).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableTrainPackage(types.ModuleType):
    """``scene.train``: this package, and :func:`scene.api.train` when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from scene.api import train

        return train(*args, **kwargs)

    @property
    def __signature__(self) -> Any:  # inspect.signature(scene.train) and help() show the API function's
        import inspect

        from scene.api import train

        return inspect.signature(train)


sys.modules[__name__].__class__ = _CallableTrainPackage
