"""The model registry in the artifact bucket: versions, the champion pointer, the promotion gate.

Layout (``prefix`` defaults to ``models/``)::

    s3://<artifact-bucket>/models/<backbone>/<version>/   model.keras, config.json, metrics.json, history.csv,
                                                         plots, report.html, model_card.md,
                                                         test_predictions.csv, checksums.json
    s3://<artifact-bucket>/models/registry.json          every registered version (a JSON list)
    s3://<artifact-bucket>/models/champion.json          the champion, the decision that made it, earlier champions

Versions are content-addressed (``<backbone>-<first 12 hex of sha256(model.keras)>``), so registering the same
model twice changes nothing. ``registry.json`` and ``champion.json`` are always written as one whole object by a
compare-and-swap: read the object and its ETag, build the new document, write it only if the ETag is unchanged.

What makes the compare-and-swap safe depends on the store (:func:`conditional_writes` probes it once per process):

* Stores that honour conditional PUTs (AWS S3, MinIO): ``put_object(IfMatch=etag)`` / ``IfNoneMatch="*"``.
  A true compare-and-swap for every writer everywhere; a lost race writes nothing.
* Stores that ignore them — the local stack's JuiceFS S3 gateway 1.4.2 accepts both headers and overwrites
  anyway (observed; conditional GETs and copies it does honour). There each pointer write runs under
  (1) an ``fcntl.flock`` on a per-user file in the temp folder, keyed by endpoint, bucket and key: an exact
  guarantee for all threads and processes on one machine — the whole local stack, whose gateway listens on
  loopback only; and (2) a lease object ``<key>.lock`` holding a random token, written, re-read after
  ``LEASE_SETTLE_S`` and used only if the token survived; stale leases expire after ``LEASE_TTL_S``. The lease
  is best effort across machines: it excludes writers whose check-then-write takes less than
  ``LEASE_SETTLE_S`` and whose clocks agree within ``LEASE_TTL_S``.

In every case a reader sees a whole ``champion.json`` written by exactly one promotion, and of several promotions
of different versions started from the same observed champion exactly one returns True (across machines on a
store without conditional writes: under the lease's timing assumption). Promoting the version that already is
the champion returns True without writing, so a retried promotion is harmless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import hashlib
import io
import json
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scene import storage
from scene.evaluate import mcnemar

PREFIX = "models/"  # registry root inside the artifact bucket
REGISTRY = "registry.json"
CHAMPION = "champion.json"
PREDICTION_COLUMNS = ("key", "sha256", "y_true", "y_pred", "correct")
LEASE_TTL_S = 30.0  # a lease older than this is considered abandoned (its holder died)
LEASE_SETTLE_S = 0.5  # wait between writing a lease and checking it survived
LEASE_TIMEOUT_S = 60.0  # give up acquiring a lease after this long
CAS_ATTEMPTS = 8  # registry.json read-modify-write retries before giving up
_NO_ETAG = '"' + "0" * 32 + '"'  # an ETag no object has (for the probe)
_LOST_RACE = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")  # S3 error codes of a failed CAS


class RegistryError(ValueError):
    """A registry request that cannot be served; the message names the version or object and what to do."""


class ConflictError(RegistryError):
    """Another writer changed a registry object first; re-read and retry."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model: where it lives and how it scored on its test split."""

    backbone: str
    version: str  # <backbone>-<12 hex of sha256(model.keras)>
    uri: str  # s3://bucket/models/<backbone>/<version>/
    created: str  # UTC ISO time of registration
    data_fingerprint: str
    test_f1_weighted: float | None
    test_accuracy: float | None
    collapsed: bool  # a collapsed model is never promoted automatically
    random_init: bool
    status: str  # "ok" or "collapsed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelVersion:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise RegistryError(f"model version record {d.get('version', d)!r} lacks fields {missing}")
        return cls(**{n: d[n] for n in names})


@dataclass(frozen=True)
class Decision:
    """The promotion gate's verdict and the McNemar evidence behind it."""

    promote: bool
    reason: str
    challenger: str | None = None  # version ids
    champion: str | None = None
    p_value: float | None = None  # exact McNemar, two-sided; None without a champion
    b: int = 0  # images only the challenger gets right
    c: int = 0  # images only the champion gets right
    n_paired: int = 0  # images both were scored on
    alpha: float = 0.05
    challenger_acc: float | None = None  # accuracy on the paired images
    champion_acc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """A short table for a Prefect artifact or a model card."""
        verdict = "**promote**" if self.promote else "**do not promote**"
        rows = [
            ("version", self.challenger or "—", self.champion or "(none)"),
            ("accuracy on paired images", _fmt(self.challenger_acc), _fmt(self.champion_acc)),
            ("images only this model gets right", *((str(self.b), str(self.c)) if self.champion else ("—", "—"))),
        ]
        lines = [f"Decision: {verdict} — {self.reason}", "", "| | challenger | champion |", "| --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        if self.p_value is not None:
            lines += ["", f"McNemar exact test on {self.n_paired} paired test images: "
                          f"p = {self.p_value:.4g} (alpha {self.alpha})."]
        elif self.champion is None:
            lines += ["", f"No champion to compare with; {self.n_paired} test images scored."]
        return "\n".join(lines)


@dataclass(frozen=True)
class Pointer:
    """``champion.json`` as read, with the ETag a later :func:`promote` must still find."""

    champion: dict[str, Any] | None
    etag: str | None


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _prefix(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


def _code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _endpoint(s3: Any) -> str:
    return str(getattr(getattr(s3, "meta", None), "endpoint_url", ""))


# --- whole-object JSON reads and conditional writes -------------------------------------------------------------


def _read(s3: Any, bucket: str, key: str) -> tuple[Any, str | None]:
    """A JSON object and its ETag, or (None, None) when absent."""
    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except Exception as err:
        if _code(err) in ("NoSuchKey", "404", "NotFound"):
            return None, None
        raise storage.explain(err, f"s3://{bucket}/{key}", _endpoint(s3)) from err
    try:
        return json.loads(obj["Body"].read()), obj["ETag"]
    except ValueError as err:
        raise RegistryError(f"s3://{bucket}/{key}: not valid JSON ({err}); restore it or delete it") from err


def _put(s3: Any, bucket: str, key: str, doc: Any, etag: str | None, *, conditional: bool) -> bool:
    """Write ``doc`` if the object still has ``etag`` (None: if it is still absent); False when it changed.

    ``conditional=False`` sends a plain PUT, for stores that reject the conditional headers (the caller holds
    a :func:`_guard` instead).
    """
    cond = ({"IfMatch": etag} if etag else {"IfNoneMatch": "*"}) if conditional else {}
    body = json.dumps(doc, indent=2).encode()
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **cond)
    except Exception as err:
        if _code(err) in _LOST_RACE:
            return False
        raise storage.explain(err, f"s3://{bucket}/{key}", _endpoint(s3)) from err
    return True


_CAPABILITY: dict[tuple[str, str], bool] = {}
_CAPABILITY_LOCK = threading.Lock()


def conditional_writes(s3: Any, bucket: str, prefix: str = PREFIX) -> bool:
    """Whether the store rejects stale ``IfMatch`` and existing-object ``IfNoneMatch="*"`` PUTs (probed once)."""
    cache_key = (_endpoint(s3), bucket)
    with _CAPABILITY_LOCK:
        if cache_key not in _CAPABILITY:
            _CAPABILITY[cache_key] = _probe(s3, bucket, f"{_prefix(prefix)}.probe/{uuid.uuid4().hex}")
        return _CAPABILITY[cache_key]


def _probe(s3: Any, bucket: str, key: str) -> bool:
    """Write a scratch object, then try to overwrite it with each condition; both must be refused."""
    _put(s3, bucket, key, {"probe": 1}, None, conditional=False)
    try:
        return all(_refused(s3, bucket, key, cond) for cond in ({"IfNoneMatch": "*"}, {"IfMatch": _NO_ETAG}))
    finally:
        with contextlib.suppress(Exception):
            s3.delete_object(Bucket=bucket, Key=key)


def _refused(s3: Any, bucket: str, key: str, cond: dict[str, str]) -> bool:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"{}", **cond)
    except Exception as err:  # a lost race means honoured; anything else (e.g. NotImplemented) means unsupported
        return _code(err) in _LOST_RACE
    return False


# --- serialising writers where the store ignores conditional writes ---------------------------------------------


@contextlib.contextmanager
def _file_lock(s3: Any, bucket: str, key: str) -> Iterator[None]:
    """An exclusive flock shared by every thread and process of this user on this machine."""
    folder = Path(tempfile.gettempdir()) / f"scene-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    name = hashlib.sha256(f"{_endpoint(s3)}|{bucket}|{key}".encode()).hexdigest()[:24]
    with open(folder / f"{name}.lock", "a+") as fh:  # a new open file description per call: threads exclude too
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lease_expired(lease: Any) -> bool:
    try:
        return datetime.fromisoformat(lease["expires"]) < datetime.now(timezone.utc)
    except (TypeError, KeyError, ValueError):
        return True  # unreadable lease: treat as abandoned


@contextlib.contextmanager
def _lease(s3: Any, bucket: str, key: str, *, ttl: float = LEASE_TTL_S, settle: float = LEASE_SETTLE_S,
           timeout: float = LEASE_TIMEOUT_S) -> Iterator[str]:
    """Hold the lease object ``key``: write a token, wait ``settle`` seconds, proceed only if it survived."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while True:
        lease, _ = _read(s3, bucket, key)
        if lease is None or _lease_expired(lease):
            expires = (datetime.now(timezone.utc) + timedelta(seconds=ttl)).isoformat()
            storage.write_bytes(f"s3://{bucket}/{key}", json.dumps(
                {"token": token, "holder": f"{socket.gethostname()}:{os.getpid()}", "expires": expires}).encode(), s3)
            time.sleep(settle)
            lease, _ = _read(s3, bucket, key)
            if isinstance(lease, dict) and lease.get("token") == token:
                break
        if time.monotonic() > deadline:
            raise ConflictError(f"s3://{bucket}/{key}: still held by {lease} after {timeout:.0f} s; if its holder "
                                f"died, delete that object (it also expires {ttl:.0f} s after it was taken)")
        time.sleep(0.1 + random.random() * 0.3)
    try:
        yield token
    finally:
        lease, _ = _read(s3, bucket, key)
        if isinstance(lease, dict) and lease.get("token") == token:
            with contextlib.suppress(Exception):  # an undeleted lease only delays others until it expires
                s3.delete_object(Bucket=bucket, Key=key)


@contextlib.contextmanager
def _guard(s3: Any, bucket: str, key: str) -> Iterator[bool]:
    """Serialise writers of ``key``: a local flock always, plus a lease where conditional PUTs are ignored.

    Yields whether the store honours conditional PUTs (pass it on to :func:`_put`).
    """
    with _file_lock(s3, bucket, key):
        if conditional_writes(s3, bucket):
            yield True
            return
        with _lease(s3, bucket, key + ".lock"):
            yield False


# --- registering ---------------------------------------------------------------------------------------------------


def version_id(backbone: str, model_path: str | Path) -> str:
    """The content-addressed version id of a saved model."""
    return f"{backbone}-{storage.sha256_file(model_path)[:12]}"


def _check_predictions(df: pd.DataFrame, what: str) -> None:
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise RegistryError(f"{what}: missing columns {missing}; expected {list(PREDICTION_COLUMNS)} "
                            "(scene.experiment.test_predictions writes them)")


def _read_metrics(local_dir: Path) -> dict[str, Any]:
    path = local_dir / "metrics.json"
    if not path.exists():
        raise RegistryError(f"{path}: missing; register a folder written by scene.experiment.train_one")
    return json.loads(path.read_text())


def _version_record(local_dir: Path, backbone: str, version: str, uri: str) -> ModelVersion:
    metrics = _read_metrics(local_dir)
    split = metrics.get("test") or metrics.get("val") or {}
    meta = metrics.get("meta", {})
    collapsed = bool(split.get("collapsed", False))
    return ModelVersion(backbone=backbone, version=version, uri=uri, created=_now(),
                        data_fingerprint=str(meta.get("data_fingerprint", "")),
                        test_f1_weighted=split.get("f1_weighted"), test_accuracy=split.get("accuracy"),
                        collapsed=collapsed, random_init=bool(meta.get("random_init", False)),
                        status="collapsed" if collapsed else "ok")


def _upload(s3: Any, local_dir: Path, uri: str, test_predictions: pd.DataFrame) -> None:
    """The folder's files, then ``test_predictions.csv`` from the frame, then a ``checksums.json`` covering both."""
    uploaded = [u for u in storage.upload_dir(local_dir, uri, s3) if not u["uri"].endswith("/test_predictions.csv")]
    buf = io.StringIO()
    test_predictions[list(PREDICTION_COLUMNS)].to_csv(buf, index=False)
    data = buf.getvalue().encode()
    storage.write_bytes(uri + "test_predictions.csv", data, s3)
    uploaded.append({"uri": uri + "test_predictions.csv", "sha256": storage.sha256_bytes(data), "bytes": len(data)})
    storage.write_bytes(uri + "checksums.json", json.dumps(uploaded, indent=2).encode(), s3)


def register(s3: Any, bucket: str, local_dir: str | Path, backbone: str, test_predictions: pd.DataFrame, *,
             prefix: str = PREFIX) -> ModelVersion:
    """Upload a trained backbone folder as a new version and list it in ``registry.json``; a no-op if known."""
    local_dir, prefix = Path(local_dir), _prefix(prefix)
    model = local_dir / "model.keras"
    if not model.is_file():
        raise RegistryError(f"{model}: missing; pass the folder a training run wrote for backbone {backbone!r}")
    _check_predictions(test_predictions, f"test_predictions of {local_dir}")
    version = version_id(backbone, model)
    known = _find(list_versions(s3, bucket, prefix=prefix), version)
    if known:
        return ModelVersion.from_dict(known)
    uri = f"s3://{bucket}/{prefix}{backbone}/{version}/"
    record = _version_record(local_dir, backbone, version, uri)
    _upload(s3, local_dir, uri, test_predictions)
    return ModelVersion.from_dict(_add_to_registry(s3, bucket, prefix + REGISTRY, record.to_dict()))


def _add_to_registry(s3: Any, bucket: str, key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` to registry.json by compare-and-swap; the existing entry if the version is already there."""
    for _ in range(CAS_ATTEMPTS):
        with _guard(s3, bucket, key) as conditional:
            doc, etag = _read(s3, bucket, key)
            entries = _entries(doc, f"s3://{bucket}/{key}")
            existing = _find(entries, entry["version"])
            if existing:
                return existing
            if _put(s3, bucket, key, [*entries, entry], etag, conditional=conditional):
                return entry
        time.sleep(random.random() * 0.5)
    raise ConflictError(f"s3://{bucket}/{key}: changed by other writers {CAS_ATTEMPTS} times in a row while "
                        f"adding {entry['version']}; retry the registration")


def _find(entries: list[dict[str, Any]], version: str) -> dict[str, Any] | None:
    return next((e for e in entries if e.get("version") == version), None)


# --- reading -------------------------------------------------------------------------------------------------------


def _entries(doc: Any, where: str) -> list[dict[str, Any]]:
    if doc is None:
        return []
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise RegistryError(f"{where}: expected a JSON list of version records; restore it from a backup")
    return doc


def list_versions(s3: Any, bucket: str, backbone: str | None = None, *, prefix: str = PREFIX) -> list[dict[str, Any]]:
    """Every registered version (oldest first), optionally of one backbone."""
    key = _prefix(prefix) + REGISTRY
    entries = _entries(_read(s3, bucket, key)[0], f"s3://{bucket}/{key}")
    return [e for e in entries if backbone is None or e.get("backbone") == backbone]


def get_version(s3: Any, bucket: str, version: str, *, prefix: str = PREFIX) -> dict[str, Any]:
    """The registry entry of one version; the error suggests close ids."""
    entries = list_versions(s3, bucket, prefix=prefix)
    entry = _find(entries, version)
    if entry is None:
        close = difflib.get_close_matches(version, [e["version"] for e in entries], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise RegistryError(f"model version {version!r} is not in s3://{bucket}/{_prefix(prefix)}{REGISTRY}; "
                            f"see `scene models list`.{hint}")
    return entry


def read_champion(s3: Any, bucket: str, *, prefix: str = PREFIX) -> Pointer:
    """``champion.json`` and its ETag (both None when there is no champion yet)."""
    doc, etag = _read(s3, bucket, _prefix(prefix) + CHAMPION)
    return Pointer(doc, etag)


def champion(s3: Any, bucket: str, *, prefix: str = PREFIX) -> dict[str, Any] | None:
    """The champion document, or None."""
    return read_champion(s3, bucket, prefix=prefix).champion


def show(s3: Any, bucket: str, version: str, *, prefix: str = PREFIX) -> dict[str, Any]:
    """A version's registry entry plus its ``metrics.json`` and whether it is the champion."""
    entry = get_version(s3, bucket, version, prefix=prefix)
    metrics = json.loads(storage.read_bytes(entry["uri"] + "metrics.json", s3))
    current = champion(s3, bucket, prefix=prefix)
    return {**entry, "is_champion": bool(current and current.get("version") == version), "metrics": metrics}


# --- deciding and promoting ----------------------------------------------------------------------------------------


def _as_bool(s: pd.Series, what: str) -> np.ndarray:
    if s.dtype == bool:
        return s.to_numpy()
    text = s.astype(str).str.strip().str.lower()
    bad = sorted(set(text) - {"true", "false", "1", "0"})
    if bad:
        raise RegistryError(f"{what}: 'correct' must be true/false, got {bad[:5]}")
    return text.isin(["true", "1"]).to_numpy()


def pair(challenger_df: pd.DataFrame, champion_df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of both models on the images both were scored on (inner join on sha256).

    Images only one table has are ignored; a duplicated image counts once. Raises when the two tables give
    the same image different labels (score the champion on the current test split).
    """
    for df, what in ((challenger_df, "challenger predictions"), (champion_df, "champion predictions")):
        for col in ("sha256", "correct"):
            if col not in df.columns:
                raise RegistryError(f"{what}: missing column {col!r}; expected {list(PREDICTION_COLUMNS)}")
    cols = [c for c in ("sha256", "correct", "y_true") if c in challenger_df.columns and c in champion_df.columns]
    a = challenger_df[cols].drop_duplicates("sha256")
    b = champion_df[cols].drop_duplicates("sha256")
    joined = a.merge(b, on="sha256", suffixes=("_a", "_b")).sort_values("sha256")
    if "y_true" in cols:
        differ = joined[joined["y_true_a"] != joined["y_true_b"]]
        if len(differ):
            raise RegistryError(f"{len(differ)} paired images have different labels in the two tables (e.g. sha256 "
                                f"{differ['sha256'].iloc[0]}); evaluate the champion on the current test split")
    a_ok, b_ok = _as_bool(joined["correct_a"], "challenger predictions"), _as_bool(joined["correct_b"], "champion")
    return a_ok, b_ok


def decide(challenger_correct: np.ndarray, champion_correct: np.ndarray | None, *, challenger_collapsed: bool,
           alpha: float = 0.05, challenger: str | None = None, champion: str | None = None) -> Decision:
    """The promotion rule.

    Promote iff the challenger is not collapsed and either there is no champion, or, on the same images,
    the challenger gets more images right that the champion gets wrong than the reverse (b > c) and the
    exact two-sided McNemar test gives p < ``alpha``. A collapsed model is never promoted; a tie, a
    non-significant gain or a worse challenger keeps the champion.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: pass a significance level between 0 and 1, e.g. 0.05")
    a = np.asarray(challenger_correct, dtype=bool).ravel()
    acc_a = float(a.mean()) if a.size else None
    base = {"challenger": challenger, "champion": champion, "alpha": alpha, "challenger_acc": acc_a,
            "n_paired": int(a.size)}
    if champion_correct is None:
        if challenger_collapsed:
            return Decision(False, "challenger is collapsed; a collapsed model is never promoted", **base)
        return Decision(True, "no champion yet", **base)
    p, b, c = mcnemar(a, champion_correct)  # challenger as A: b = only the challenger right
    acc_b = float(np.asarray(champion_correct, dtype=bool).mean()) if a.size else None
    stats = {**base, "p_value": p, "b": b, "c": c, "champion_acc": acc_b}
    if challenger_collapsed:
        return Decision(False, "challenger is collapsed; a collapsed model is never promoted", **stats)
    if b <= c:
        return Decision(False, f"challenger is not better on the paired images (only it right {b}, "
                               f"only the champion right {c})", **stats)
    if p >= alpha:
        return Decision(False, f"challenger is better but not significantly (p={p:.4g} >= {alpha})", **stats)
    return Decision(True, f"challenger is significantly better (p={p:.4g} < {alpha})", **stats)


def _as_version(version: ModelVersion | dict[str, Any]) -> ModelVersion:
    return version if isinstance(version, ModelVersion) else ModelVersion.from_dict(version)


def _history_entry(doc: dict[str, Any]) -> dict[str, Any]:
    reason = (doc.get("decision") or {}).get("reason", "")
    return {k: doc.get(k) for k in ("backbone", "version", "uri", "promoted_at")} | {"reason": reason}


def _champion_doc(v: ModelVersion, decision: dict[str, Any] | None, previous: dict[str, Any] | None,
                  history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if history is None:
        history = [_history_entry(previous), *previous.get("history", [])] if previous else []
    return {"backbone": v.backbone, "version": v.version, "uri": v.uri, "model": v.uri + "model.keras",
            "promoted_at": _now(), "decision": decision, "history": history, "write_id": uuid.uuid4().hex}


def _swap(s3: Any, bucket: str, prefix: str, expected_etag: str | None, make: Any) -> bool:
    """Write ``make(current)`` as champion.json if its ETag is still ``expected_etag``."""
    key = _prefix(prefix) + CHAMPION
    with _guard(s3, bucket, key) as conditional:
        current, etag = _read(s3, bucket, key)
        if etag != expected_etag:
            return False
        return _put(s3, bucket, key, make(current), etag, conditional=conditional)


def promote(s3: Any, bucket: str, version: ModelVersion | dict[str, Any], decision: Decision | None, *,
            expected_etag: str | None, prefix: str = PREFIX) -> bool:
    """Make ``version`` the champion if champion.json still has ``expected_etag`` (None: no champion yet).

    Returns False, writing nothing, when another promotion got there first; True when written, or when
    ``version`` already is the champion (a retried promotion). Does not judge the model: see :func:`gate`.
    """
    v = _as_version(version)
    current = read_champion(s3, bucket, prefix=prefix)
    if current.champion and current.champion.get("version") == v.version:
        return True
    decided = decision.to_dict() if decision else None
    return _swap(s3, bucket, prefix, expected_etag, lambda prev: _champion_doc(v, decided, prev))


def gate(s3: Any, bucket: str, challenger: ModelVersion | dict[str, Any], challenger_correct: np.ndarray,
         champion_correct: np.ndarray | None, *, observed: Pointer, alpha: float = 0.05,
         prefix: str = PREFIX) -> Decision:
    """Decide on the challenger against the champion in ``observed`` and, if it wins, promote it atomically.

    ``observed`` is the :func:`read_champion` result the caller scored the champion from; the correctness
    arrays cover the same images (:func:`pair`). If champion.json changed since, nothing is written and the
    returned decision says so (re-run the gate against the new champion).
    """
    v = _as_version(challenger)
    current = observed.champion
    if (current is None) != (champion_correct is None):
        state = "no champion" if current is None else f"champion {current.get('version')}"
        raise ValueError(f"champion_correct must be None exactly when there is no champion; observed {state}")
    if current and current.get("version") == v.version:
        return Decision(False, "challenger already is the champion", v.version, v.version, alpha=alpha)
    d = decide(challenger_correct, champion_correct, challenger_collapsed=v.collapsed, alpha=alpha,
               challenger=v.version, champion=current.get("version") if current else None)
    if d.promote and not promote(s3, bucket, v, d, expected_etag=observed.etag, prefix=prefix):
        now = champion(s3, bucket, prefix=prefix)
        return dataclasses.replace(d, promote=False, reason=(
            f"not promoted: champion.json changed while gating (now {now and now.get('version')}); "
            f"re-run the gate against the new champion (the challenger had won: {d.reason})"))
    return d


def promote_version(s3: Any, bucket: str, version_id: str, reason: str = "manual", *, force: bool = False,
                    prefix: str = PREFIX) -> dict[str, Any]:
    """Make a registered version the champion by hand; refuses a collapsed model unless ``force``."""
    v = ModelVersion.from_dict(get_version(s3, bucket, version_id, prefix=prefix))
    if v.collapsed and not force:
        raise RegistryError(f"model version {version_id!r} is collapsed (test metrics near chance or one class); "
                            "refusing to promote it — pass force=True (--force) if you really mean to")
    observed = read_champion(s3, bucket, prefix=prefix)
    previous = observed.champion.get("version") if observed.champion else None
    d = Decision(True, f"manual promotion: {reason}" + (" (forced)" if force else ""), v.version, previous)
    if not promote(s3, bucket, v, d, expected_etag=observed.etag, prefix=prefix):
        raise ConflictError(f"champion.json changed while promoting {version_id!r}; check `scene models list` "
                            "and retry")
    return champion(s3, bucket, prefix=prefix) or {}


def rollback(s3: Any, bucket: str, *, prefix: str = PREFIX) -> dict[str, Any]:
    """Restore the previous champion from champion.json's history; returns the new champion document."""
    observed = read_champion(s3, bucket, prefix=prefix)
    where = f"s3://{bucket}/{_prefix(prefix)}{CHAMPION}"
    if observed.champion is None:
        raise RegistryError(f"{where}: there is no champion, so nothing to roll back")
    history = observed.champion.get("history") or []
    if not history:
        raise RegistryError(f"{where}: champion {observed.champion.get('version')} has no previous champion to "
                            "roll back to; promote a version by hand with `scene models promote VERSION`")
    prev, rest = history[0], history[1:]
    v = ModelVersion.from_dict(get_version(s3, bucket, prev["version"], prefix=prefix))
    decided = Decision(True, f"rollback from {observed.champion.get('version')}", v.version,
                       observed.champion.get("version")).to_dict()
    if not _swap(s3, bucket, prefix, observed.etag, lambda _: _champion_doc(v, decided, None, rest)):
        raise ConflictError(f"{where} changed during the rollback; check `scene models list` and retry")
    return champion(s3, bucket, prefix=prefix) or {}


__all__ = [
    "CHAMPION", "PREFIX", "REGISTRY", "ConflictError", "Decision", "ModelVersion", "Pointer", "RegistryError",
    "champion", "conditional_writes", "decide", "gate", "get_version", "list_versions", "pair", "promote",
    "promote_version", "read_champion", "register", "rollback", "show", "version_id",
]
