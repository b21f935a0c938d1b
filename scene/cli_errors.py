"""What every ``scene`` sub-command module shares with :mod:`scene.cli` without importing it (no import cycle)."""

from __future__ import annotations

from typing import Any


class CliError(RuntimeError):
    """A user-facing error: printed without a traceback."""


def settings_from_env() -> Any:
    """:class:`scene.settings.Settings` from the environment (``SCENE_*``, ``AWS_*``, ``SCENE_CONFIG``)."""
    from scene.settings import Settings

    return Settings.from_env()
