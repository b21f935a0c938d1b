"""Moving small test data in and out of a stack's S3 gateway."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from scene.data import storage


def upload(s3: Any, root: Path, dest: str) -> str:
    """Upload every JPEG under ``root`` to the ``dest`` prefix, keeping the folder layout."""
    for p in sorted(root.rglob("*.jpg")):
        storage.upload_file(p, dest + p.relative_to(root).as_posix(), s3)
    return dest


def read_json(s3: Any, uri: str) -> Any:
    """The JSON object stored at ``uri``."""
    return json.loads(storage.read_bytes(uri, s3))


def read_csv(s3: Any, uri: str, **kwargs: Any) -> pd.DataFrame:
    """The CSV stored at ``uri`` as a DataFrame (``kwargs`` go to :func:`pandas.read_csv`)."""
    return pd.read_csv(io.BytesIO(storage.read_bytes(uri, s3)), **kwargs)


def client_from_env() -> Any:
    """An S3 client for the stack this process is pointed at (``scene.Settings`` from the environment)."""
    from scene.settings import Settings

    return storage.s3_client(Settings.from_env())
