"""A local stack's environment (``scene stack env``), and entering it in this process for a while."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def env_of(state_dir: str | Path, *, folders: bool = False) -> dict[str, str]:
    """The variables ``scene stack env`` exports for the stack in ``state_dir`` (quotes removed).

    ``folders=True`` adds ``SCENE_WORK_DIR`` and ``SCENE_FEATURE_CACHE`` inside the state folder."""
    from scene.ops import stack as stack_mod

    lines = stack_mod.env_lines(state_dir)
    values = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    out = {k: v.strip("'\"") for k, v in values.items()}
    if folders:
        out["SCENE_WORK_DIR"] = str(Path(state_dir) / "work")
        out["SCENE_FEATURE_CACHE"] = str(Path(state_dir) / "features")
    return out


def api_settings(env: dict[str, str]) -> dict[Any, Any]:
    """Prefect's API URL and auth string of a stack, for ``temporary_settings(updates=...)``.

    A switch between stacks must set both: settings this process already holds win over the environment, so an
    auth string read for one stack would otherwise be sent to the next (401)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    return {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env.get("PREFECT_API_AUTH_STRING")}


@contextlib.contextmanager
def stack_environ(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` and Prefect's API URL and auth string pointed at the stack, restored on exit."""
    from prefect.settings import temporary_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with temporary_settings(updates=api_settings(env)):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
