"""Helpers shared by the integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scene.data import storage


def upload(s3: Any, root: Path, dest: str) -> str:
    """Upload every JPEG under ``root`` to the ``dest`` prefix, keeping the folder layout."""
    for p in sorted(root.rglob("*.jpg")):
        storage.upload_file(p, dest + p.relative_to(root).as_posix(), s3)
    return dest
