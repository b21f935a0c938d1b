"""Smoke-load an exported model in a fresh Python process before it may become champion.

A model can train, score and save fine and still not load elsewhere (a custom layer not registered, a
Keras/TF version change, a truncated upload). :func:`check_model` copies a few test images (by their manifest
key, local path or ``s3://``) into a temporary folder, starts ``python -m scene.model.predict MODEL IMAGE...``
— a new interpreter that imports only what a user would (``scene.model.network.load``,
``scene.model.predict.predict``) — and passes only if it predicts every image's class (argmax) exactly as the run
recorded in ``test_predictions.csv``.

The child's command line (:func:`scene.model.predict.main`; prints one JSON line ``{"pred": [...], "size": N}``)::

    python -m scene.model.predict path/to/model.keras image1.jpg image2.jpg ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from scene.data import storage

SMOKE_IMAGES = 8  # test images the fresh process must predict identically
SMOKE_TIMEOUT_S = 300.0  # TensorFlow import + model load + a batch, with room for a busy machine


@dataclass(frozen=True)
class SmokeResult:
    """The outcome of one fresh-process load check."""

    ok: bool
    reason: str
    keys: list[str] = field(default_factory=list)  # the test images used
    expected: list[int] = field(default_factory=list)  # recorded y_pred
    got: list[int] = field(default_factory=list)  # the fresh process's argmax
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick(predictions: pd.DataFrame, n: int = SMOKE_IMAGES) -> pd.DataFrame:
    """``n`` rows spread over the true classes, in a fixed order (round-robin over classes, by sha256)."""
    rows = predictions.drop_duplicates("sha256").sort_values("sha256")
    groups = [g for _, g in rows.groupby("y_true", sort=True)]
    out: list[pd.Series] = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g.iloc[i] for g in groups if i < len(g)]
    return pd.DataFrame(out[:n]).reset_index(drop=True)


def predict_in_fresh_process(model_path: str | Path, images: list[Path], *,
                             timeout: float = SMOKE_TIMEOUT_S) -> list[int]:
    """The argmax class of each image, predicted by ``model_path`` loaded in a new interpreter."""
    cmd = [sys.executable, "-m", "scene.model.predict", str(model_path), *(str(p) for p in images)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"`python -m scene.model.predict {model_path} ...` did not finish within "
                           f"{timeout:.0f} s") from err
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"`python -m scene.model.predict {model_path} ...` exited with {proc.returncode}: {tail}")
    lines = proc.stdout.strip().splitlines()
    try:
        return [int(v) for v in json.loads(lines[-1])["pred"]]
    except (IndexError, KeyError, TypeError, ValueError) as err:
        raise RuntimeError("`python -m scene.model.predict` printed no prediction line: "
                           f"{proc.stdout[-300:]!r}") from err


def check_model(model_path: str | Path, predictions: pd.DataFrame, *, s3: Any = None, n: int = SMOKE_IMAGES,
                timeout: float = SMOKE_TIMEOUT_S) -> SmokeResult:
    """Load ``model_path`` in a fresh process and compare its classes on ``n`` test images with ``y_pred``."""
    start = time.monotonic()
    rows = pick(predictions, n)
    keys, expected = [str(k) for k in rows["key"]], [int(v) for v in rows["y_pred"]]
    if not keys:
        return SmokeResult(False, "no recorded test predictions to compare with")
    with tempfile.TemporaryDirectory(prefix="scene-smoke-") as tmp:
        paths = []
        for i, key in enumerate(keys):
            path = Path(tmp) / f"{i:03d}{PurePosixPath(key).suffix}"
            try:
                path.write_bytes(storage.read_bytes(key, s3))
            except storage.StorageError as err:
                return SmokeResult(False, f"cannot read test image {key}: {err}", keys, expected)
            paths.append(path)
        try:
            got = predict_in_fresh_process(model_path, paths, timeout=timeout)
        except RuntimeError as err:
            return SmokeResult(False, f"the exported model does not load and predict in a fresh process: {err}",
                               keys, expected, seconds=time.monotonic() - start)
    seconds = time.monotonic() - start
    differ = [k for k, e, g in zip(keys, expected, got, strict=False) if e != g]
    if len(got) != len(keys) or differ:
        return SmokeResult(False, f"the exported model, loaded in a fresh process, predicts {len(differ)} of "
                                  f"{len(keys)} test images differently from the recorded test predictions "
                                  f"(e.g. {differ[:1]}): the saved file is not the model that was scored",
                           keys, expected, got, seconds)
    return SmokeResult(True, f"{len(keys)} test images predicted identically by model.keras loaded in a fresh "
                             "process", keys, expected, got, seconds)


def check_version(s3: Any, version_uri: str, predictions: pd.DataFrame, *, n: int = SMOKE_IMAGES,
                  timeout: float = SMOKE_TIMEOUT_S) -> SmokeResult:
    """:func:`check_model` on a registered version's ``model.keras``, downloaded and verified against its
    ``checksums.json`` and version id (:func:`scene.registry.integrity.fetch_version`)."""
    from scene.registry.integrity import IntegrityError, fetch_version

    with tempfile.TemporaryDirectory(prefix="scene-smoke-model-") as tmp:
        try:
            folder = fetch_version(s3, version_uri, Path(tmp) / "version", names=[])
        except (IntegrityError, storage.StorageError) as err:
            return SmokeResult(False, f"cannot fetch the exported model intact: {err}")
        return check_model(folder / "model.keras", predictions, s3=s3, n=n, timeout=timeout)
