"""Where flows may read data from and write to: each location parameter has the one place it may touch.

The ``data`` of ``retrain``/``predict``/``train-all`` comes from an event or a person; a worker holds credentials
that reach more than the data (the artifact bucket, the registry, its own disk), so a flow refuses any other
location before touching it: no local paths, no other bucket, no key outside the prefix, no ``..`` segments.

The same goes for what a parameter makes a flow *write* (anyone who can create a flow run picks it): ``predict``'s
``out`` only under ``s3://<artifacts>/predictions/``, ``train-backbone``'s ``run_prefix_uri`` only under
``s3://<artifacts>/runs/<the run that started it, or its own>/``, ``watch``'s ``state_key`` only under
``sensors/`` (not another sensor's file), ``predict-chunk``'s ``folder`` only under ``predictions/``,
``extract-chunk``'s ``feature_cache`` only the worker's own or under ``s3://<artifacts>/features/``. The
registry prefix (``models/``) is never a parameter's target:
only the registry code writes there.
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


REGISTRY_PREFIX = "models/"  # champion pointers, versions, registry.json: written by scene.registry only
PREDICTIONS_PREFIX = "predictions/"  # predict's out
RUNS_PREFIX = "runs/"  # runs/<flow run id>/: a run's artifacts
SENSORS_PREFIX = "sensors/"  # watch state files (and the reconcile history, which the watch flow may not touch)
RESERVED_SENSOR_KEYS = ("sensors/reconcile-",)  # scene.ops.reconcile's history


def require_artifact_uri(uri: str, settings: Any, *, name: str, prefixes: Sequence[str], hint: str = "") -> str:
    """``uri`` when it is ``s3://<settings.artifact_bucket>/<one of prefixes>...`` (never ``models/``); else a
    ValueError naming the parameter, the URI and where it may point instead."""
    allowed = " or ".join(f"s3://{settings.artifact_bucket}/{p}" for p in prefixes)
    hint = f" ({hint})" if hint else ""
    text = str(uri)
    if not text.startswith("s3://"):
        raise ValueError(f"{name}={text!r}: flows write only to the artifact bucket, under {allowed}{hint}")
    bucket, _, key = text[len("s3://"):].partition("/")
    if bucket != settings.artifact_bucket:
        raise ValueError(f"{name}={text!r}: bucket {bucket!r} is not the artifact bucket; use a location under "
                         f"{allowed}{hint} (SCENE_ARTIFACT_BUCKET)")
    why = unsafe_key(key.rstrip("/") + "/x") if key else ""
    if why:
        raise ValueError(f"{name}={text!r}: {why}; use a location under {allowed}{hint}")
    if key.startswith(REGISTRY_PREFIX):
        raise ValueError(f"{name}={text!r}: the registry ({REGISTRY_PREFIX}) is written only by the registry code, "
                         f"never through a parameter; use a location under {allowed}{hint}")
    if not any(key.startswith(p.rstrip("/") + "/") for p in prefixes):
        raise ValueError(f"{name}={text!r}: outside where this flow may write; use a location under {allowed}{hint}")
    return text


def require_predictions_uri(uri: str, settings: Any) -> str:
    """predict's ``out``: a file under ``s3://<artifacts>/predictions/``."""
    text = require_artifact_uri(uri, settings, name="out", prefixes=(PREDICTIONS_PREFIX,),
                                hint="e.g. predictions/<name>/predictions.csv, or leave out unset")
    if text.endswith("/"):
        raise ValueError(f"out={text!r}: name a file (e.g. .../predictions.csv), not a folder")
    return text


def require_predictions_folder(uri: str, settings: Any, name: str = "folder") -> str:
    """A predict-chunk run's ``folder``: a folder under ``s3://<artifacts>/predictions/``."""
    return require_artifact_uri(uri, settings, name=name, prefixes=(PREDICTIONS_PREFIX,),
                                hint="e.g. predictions/<run>/ (the predict run that starts the chunk passes it)")


FEATURES_PREFIX = "features/"  # extract-chunk's feature_cache when it is not the worker's own


def require_feature_cache(uri: str | None, settings: Any) -> str | None:
    """extract-chunk's ``feature_cache``: unset, the worker's own (``SCENE_FEATURE_CACHE``), or an ``s3://`` folder
    under ``s3://<artifacts>/features/``; never a local path the caller picks on the worker's disk."""
    if uri is None or str(uri) == str(settings.feature_cache):
        return uri
    return require_artifact_uri(uri, settings, name="feature_cache", prefixes=(FEATURES_PREFIX,),
                                hint="or leave it unset for the worker's SCENE_FEATURE_CACHE")


def require_run_prefix(uri: str, settings: Any, run_ids: Sequence[str | None]) -> str:
    """train-backbone's ``run_prefix_uri``: inside ``s3://<artifacts>/runs/<id>/`` for one of ``run_ids``.

    ``run_ids``: the flow run that started this one (train-all or retrain: their children write into the
    parent's folder) and this run's own id; ``None`` entries (no parent, no run) are skipped.
    """
    ids = [str(i) for i in run_ids if i]
    if not ids:
        raise ValueError(f"run_prefix_uri={uri!r}: only a flow run may choose a run folder (runs/<its run id>/); "
                         "leave run_prefix_uri unset")
    return require_artifact_uri(uri, settings, name="run_prefix_uri",
                                prefixes=tuple(f"{RUNS_PREFIX}{i}/" for i in ids),
                                hint="the folder of this run or of the run that started it; or leave it unset")


def require_state_key(key: str, *, name: str = "state_key") -> str:
    """watch's ``state_key``: a ``.json`` key of the artifact bucket under ``sensors/``, not another sensor's."""
    text = str(key)
    allowed = f"{SENSORS_PREFIX}<name>.json, e.g. {SENSORS_PREFIX}watch-state.json"
    why = "not a key (no s3://, no leading /)" if text.startswith("/") or "://" in text else unsafe_key(text)
    if why:
        raise ValueError(f"{name}={text!r}: {why}; pass a key of the artifact bucket like {allowed}")
    if not text.startswith(SENSORS_PREFIX) or not text.endswith(".json") or text == SENSORS_PREFIX + ".json":
        raise ValueError(f"{name}={text!r}: the watch state lives under {SENSORS_PREFIX} and ends in .json; "
                         f"pass {allowed}")
    if text.startswith(RESERVED_SENSOR_KEYS):
        raise ValueError(f"{name}={text!r}: that key belongs to another sensor ({', '.join(RESERVED_SENSOR_KEYS)}); "
                         f"pass {allowed}")
    return text


def require_data_uris(settings: Any, **uris: str | None) -> None:
    """:func:`require_data_uri` for each named location that is set (e.g. ``data=..., test=...``)."""
    for name, uri in uris.items():
        if uri is not None:
            require_data_uri(uri, settings, name=name)
