"""Where flows may read data from: only inside the configured data bucket and prefix.

The ``data`` of ``retrain``/``predict`` comes from an event or a person; a worker holds credentials that
reach more than the data (the artifact bucket, the registry, its own disk), so a flow refuses any other
location before touching it: no local paths, no other bucket, no key outside the prefix, no ``..`` segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PREDICT_PREFIX = "incoming/"  # predict also reads unlabelled batches from s3://<data bucket>/incoming/


def unsafe_key(key: str) -> str:
    """Why a key cannot name data (``.``/``..``/empty segments, control characters), or ``""`` when it can."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "key contains control characters"
    if any(part in ("", ".", "..") for part in key.split("/")[:-1]) or key.rsplit("/", 1)[-1] in (".", ".."):
        return "key has a '.', '..' or empty path segment"
    return ""


def require_data_uri(uri: str, settings: Any, *, name: str = "data", prefixes: Sequence[str] | None = None) -> str:
    """``uri`` when it is ``s3://<settings.data_bucket>/<one of prefixes>...``; else a ValueError saying where.

    ``prefixes`` default to ``(settings.data_prefix,)``; an empty prefix allows the whole data bucket.
    """
    prefixes = tuple(prefixes if prefixes is not None else (settings.data_prefix,))
    allowed = " or ".join(f"s3://{settings.data_bucket}/{p}" for p in prefixes)
    text = str(uri)
    if not text.startswith("s3://"):
        raise ValueError(f"{name}={text!r}: flows read data only from the data bucket, under {allowed}; "
                         "upload it there first (scene data upload)")
    bucket, _, key = text[len("s3://"):].partition("/")
    if bucket != settings.data_bucket:
        raise ValueError(f"{name}={text!r}: bucket {bucket!r} is not the data bucket; use a location under "
                         f"{allowed} (SCENE_DATA_BUCKET)")
    why = unsafe_key(key.rstrip("/") + "/x") if key else ""
    if why:
        raise ValueError(f"{name}={text!r}: {why}; name a dataset folder under {allowed}")
    if not any(key.startswith(p.rstrip("/") + "/") or not p for p in prefixes):
        raise ValueError(f"{name}={text!r}: outside the data prefix; use a location under {allowed} "
                         "(SCENE_DATA_PREFIX)")
    return text
