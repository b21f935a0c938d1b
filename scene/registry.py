"""The model registry in the artifact bucket: versions, the champion pointer, the promotion gate.

Layout (``prefix`` defaults to ``models/``)::

    s3://<artifact-bucket>/models/<backbone>/<version>/   model.keras, config.json, metrics.json, history.csv,
                                                         plots, report.html, model_card.md, manifest.csv,
                                                         test_predictions.csv, decision.json, decision.md,
                                                         checksums.json (sha256 of every other file)
    s3://<artifact-bucket>/models/registry.json          every registered version (a JSON list)
    s3://<artifact-bucket>/models/champions/<slug>.json  one champion per dataset: the version, its data URI,
                                                         the decision that made it, earlier champions

The dataset is a registry dimension: every version records the data root it was trained on (``dataset``, an
URI with a trailing slash, e.g. ``s3://scene-data/datasets/demo/``), and each dataset lineage has its own
champion pointer, named ``<readable part of the URI>-<10 hex of sha256(URI)>`` (:func:`champion_key`). A
challenger is gated only against the champion of its own dataset. :func:`champion` without a dataset means
the most recently promoted champion of any dataset (what ``scene predict`` uses by default).

Versions are content-addressed (``<backbone>-<first 12 hex of sha256(model.keras)>``), so registering the same
model twice changes nothing. ``registry.json`` and the champion pointers are always written as one whole object by a
compare-and-swap: read the object and its ETag, build the new document, write it only if the ETag is unchanged.

The promotion rule itself is the pure module :mod:`scene.gate`; :func:`gate` applies it, smoke-loads the
challenger in a fresh process (:mod:`scene.smoke`), moves the pointer and stores the decision.

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

In every case a reader sees a whole champion pointer written by exactly one promotion, and of several promotions
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
import re
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

import pandas as pd

from scene import storage
from scene.gate import (
    ALPHA,
    MARGIN,
    PREDICTION_COLUMNS,
    Decision,
    GateError,
    Paired,
    decide,
    pair,
    per_class_recall,
    select_challenger,
)
from scene.smoke import SmokeResult, check_version

PREFIX = "models/"  # registry root inside the artifact bucket
REGISTRY = "registry.json"
CHAMPIONS = "champions/"  # one pointer object per dataset under <prefix>champions/
LEASE_TTL_S = 30.0  # a lease older than this is considered abandoned (its holder died)
LEASE_SETTLE_S = 0.5  # wait between writing a lease and checking it survived
LEASE_TIMEOUT_S = 60.0  # give up acquiring a lease after this long
CAS_ATTEMPTS = 8  # registry.json read-modify-write retries before giving up
DECISION_FILES = ("decision.json", "decision.md")
_NO_ETAG = '"' + "0" * 32 + '"'  # an ETag no object has (for the probe)
_LOST_RACE = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")  # S3 error codes of a failed CAS


class RegistryError(ValueError):
    """A registry request that cannot be served; the message names the version or object and what to do."""


class ConflictError(RegistryError):
    """Another writer changed a registry object first; re-read and retry."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered model: where it lives, what data it was trained on and how it scored on its test split."""

    backbone: str
    version: str  # <backbone>-<12 hex of sha256(model.keras)>
    uri: str  # s3://bucket/models/<backbone>/<version>/
    created: str  # UTC ISO time of registration
    data_fingerprint: str
    test_f1_weighted: float | None
    test_accuracy: float | None
    collapsed: bool  # a collapsed model is never promoted automatically
    random_init: bool  # nor is a random-init one ...
    status: str  # "ok" or "collapsed"
    dataset: str = ""  # the data root URI it was trained on, with a trailing slash ("" for old records)
    synthetic_data: bool = False  # ... nor one trained on generated data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelVersion:
        """From a registry entry; fields added later (``dataset``, ``synthetic_data``) default for old entries."""
        fs = dataclasses.fields(cls)
        missing = [f.name for f in fs if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise RegistryError(f"model version record {d.get('version', d)!r} lacks fields {missing}")
        return cls(**{f.name: d[f.name] for f in fs if f.name in d})

    @property
    def flags(self) -> list[str]:
        """Why this version may not be promoted without ``--force`` (empty when it may)."""
        return [name for name, on in (("collapsed", self.collapsed), ("random-init", self.random_init),
                                      ("trained on synthetic data", self.synthetic_data)) if on]


@dataclass(frozen=True)
class Pointer:
    """A dataset's champion pointer as read, with the ETag a later :func:`promote` must still find."""

    champion: dict[str, Any] | None
    etag: str | None
    dataset: str | None = None  # the dataset whose pointer this is (None: not read for a specific dataset)


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


# --- datasets ----------------------------------------------------------------------------------------------------


def dataset_uri(source: str | Path) -> str:
    """A data root in canonical form: ``s3://bucket/prefix/`` or an absolute local folder, with a trailing slash."""
    text = str(source).strip()
    if not text:
        raise RegistryError("dataset: empty data root; pass the URI the model was trained on, "
                            "e.g. s3://scene-data/datasets/demo/")
    if storage.parse(text).is_s3:
        return text.rstrip("/") + "/"
    return Path(text).expanduser().resolve().as_posix().rstrip("/") + "/"


def champion_key(dataset: str, prefix: str = PREFIX) -> str:
    """The key of a dataset's champion pointer: ``<prefix>champions/<readable URI>-<10 hex of its sha256>.json``."""
    uri = dataset_uri(dataset)
    readable = re.sub(r"[^a-z0-9]+", "-", uri.split("://", 1)[-1].lower()).strip("-")[-60:].strip("-") or "data"
    return f"{_prefix(prefix)}{CHAMPIONS}{readable}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}.json"


# --- registering ---------------------------------------------------------------------------------------------------


def version_id(backbone: str, model_path: str | Path) -> str:
    """The content-addressed version id of a saved model."""
    return f"{backbone}-{storage.sha256_file(model_path)[:12]}"


def _check_predictions(df: pd.DataFrame, what: str) -> None:
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise RegistryError(f"{what}: missing columns {missing}; expected {list(PREDICTION_COLUMNS)} "
                            "(scene.experiment.test_predictions writes them)")


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise RegistryError(f"{path}: missing; register a folder written by scene.experiment.train_one")
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError as err:
        raise RegistryError(f"{path}: not valid JSON ({err}); re-run the training that wrote it") from err
    return doc if isinstance(doc, dict) else {}


def _version_record(local_dir: Path, backbone: str, version: str, uri: str, dataset: str | None) -> ModelVersion:
    metrics = _read_json(local_dir / "metrics.json", required=True)
    split = metrics.get("test") or metrics.get("val") or {}
    meta = metrics.get("meta", {})
    source = dataset or meta.get("data_source") or _read_json(local_dir / "config.json", False).get("data_source")
    if not source:
        raise RegistryError(f"{local_dir}: no dataset recorded (metrics.json meta 'data_source' and config.json "
                            "'data_source' are absent); pass dataset=<data root URI> to register()")
    collapsed = bool(split.get("collapsed", False))
    return ModelVersion(backbone=backbone, version=version, uri=uri, created=_now(),
                        data_fingerprint=str(meta.get("data_fingerprint", "")),
                        test_f1_weighted=split.get("f1_weighted"), test_accuracy=split.get("accuracy"),
                        collapsed=collapsed, random_init=bool(meta.get("random_init", False)),
                        status="collapsed" if collapsed else "ok", dataset=dataset_uri(source),
                        synthetic_data=bool(meta.get("synthetic_data", False)))


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
             dataset: str | None = None, prefix: str = PREFIX) -> ModelVersion:
    """Upload a trained backbone folder as a new version and list it in ``registry.json``; a no-op if known.

    ``dataset``: the data root it was trained on; default: ``metrics.json``'s ``meta.data_source`` (else
    ``config.json``'s ``data_source``). ``synthetic_data`` and ``random_init`` come from ``metrics.json``'s meta.
    """
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
    record = _version_record(local_dir, backbone, version, uri, dataset)
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


def _pointers(s3: Any, bucket: str, prefix: str) -> list[tuple[dict[str, Any], str | None]]:
    """Every champion pointer document (with its ETag), in key order."""
    root = f"s3://{bucket}/{_prefix(prefix)}{CHAMPIONS}"
    out = []
    for uri, _ in storage.list_files(root, s3):
        if uri.endswith(".json"):
            doc, etag = _read(s3, bucket, uri.split("/", 3)[3])
            if isinstance(doc, dict) and doc.get("data"):
                out.append((doc, etag))
    return out


def read_champion(s3: Any, bucket: str, *, dataset: str | None = None, prefix: str = PREFIX) -> Pointer:
    """A dataset's champion pointer and its ETag (both None when that dataset has no champion yet).

    Without ``dataset``: the most recently promoted champion of any dataset (an empty Pointer when none).
    """
    if dataset is not None:
        uri = dataset_uri(dataset)
        doc, etag = _read(s3, bucket, champion_key(uri, prefix))
        return Pointer(doc, etag, uri)
    docs = _pointers(s3, bucket, prefix)
    if not docs:
        return Pointer(None, None, None)
    doc, etag = max(docs, key=lambda d: str(d[0].get("promoted_at", "")))
    return Pointer(doc, etag, doc["data"])


def champion(s3: Any, bucket: str, *, dataset: str | None = None, prefix: str = PREFIX) -> dict[str, Any] | None:
    """A dataset's champion document (without ``dataset``: the most recently promoted of any), or None.

    Fields: ``data`` (dataset URI), ``model`` (URI of model.keras), ``version``, ``backbone``, ``uri``,
    ``promoted_at``, ``decision``, ``history``.
    """
    return read_champion(s3, bucket, dataset=dataset, prefix=prefix).champion


def champions(s3: Any, bucket: str, *, prefix: str = PREFIX) -> dict[str, dict[str, Any]]:
    """Every dataset's champion document, keyed by dataset URI."""
    return {doc["data"]: doc for doc, _ in _pointers(s3, bucket, prefix)}


def show(s3: Any, bucket: str, version: str, *, prefix: str = PREFIX) -> dict[str, Any]:
    """A version's registry entry plus its ``metrics.json`` and whether it is its dataset's champion."""
    entry = get_version(s3, bucket, version, prefix=prefix)
    metrics = json.loads(storage.read_bytes(entry["uri"] + "metrics.json", s3))
    current = champion(s3, bucket, dataset=entry["dataset"], prefix=prefix) if entry.get("dataset") else None
    return {**entry, "is_champion": bool(current and current.get("version") == version), "metrics": metrics}


# --- the decision objects ------------------------------------------------------------------------------------------


def write_decision(s3: Any, version: ModelVersion, decision: Decision) -> list[str]:
    """Store ``decision.json`` and ``decision.md`` in the version's folder and list them in its checksums.json."""
    base = version.uri.rstrip("/") + "/"
    payloads = {
        "decision.json": json.dumps({**decision.to_dict(), "decided_at": _now()}, indent=2).encode(),
        "decision.md": f"# Promotion decision: {version.version}\n\n{decision.markdown()}\n".encode(),
    }
    for name, data in payloads.items():
        storage.write_bytes(base + name, data, s3)
    listed: Any = []
    if storage.exists(base + "checksums.json", s3):
        listed = json.loads(storage.read_bytes(base + "checksums.json", s3))
    if not isinstance(listed, list):
        raise RegistryError(f"{base}checksums.json: expected a JSON list of files; re-register {version.version}")
    kept = [e for e in listed if str(e.get("uri", "")).rsplit("/", 1)[-1] not in DECISION_FILES]
    kept += [{"uri": base + name, "sha256": storage.sha256_bytes(data), "bytes": len(data)}
             for name, data in payloads.items()]
    storage.write_bytes(base + "checksums.json", json.dumps(kept, indent=2).encode(), s3)
    return [base + name for name in payloads]


def read_decision(s3: Any, version: ModelVersion | dict[str, Any]) -> Decision | None:
    """The stored decision of a version, or None when it was never gated."""
    uri = _as_version(version).uri.rstrip("/") + "/decision.json"
    return Decision.from_dict(json.loads(storage.read_bytes(uri, s3))) if storage.exists(uri, s3) else None


# --- promoting -----------------------------------------------------------------------------------------------------


def _as_version(version: ModelVersion | dict[str, Any]) -> ModelVersion:
    return version if isinstance(version, ModelVersion) else ModelVersion.from_dict(version)


def _pointer_key(v: ModelVersion, prefix: str) -> str:
    if not v.dataset:
        raise RegistryError(f"model version {v.version} records no dataset (registered before datasets were a "
                            "registry dimension); register its folder again with dataset=<data root URI>")
    return champion_key(v.dataset, prefix)


def _history_entry(doc: dict[str, Any]) -> dict[str, Any]:
    reason = (doc.get("decision") or {}).get("reason", "")
    return {k: doc.get(k) for k in ("backbone", "version", "uri", "promoted_at")} | {"reason": reason}


def _champion_doc(v: ModelVersion, decision: dict[str, Any] | None, previous: dict[str, Any] | None,
                  history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if history is None:
        history = [_history_entry(previous), *previous.get("history", [])] if previous else []
    return {"data": v.dataset, "backbone": v.backbone, "version": v.version, "uri": v.uri,
            "model": v.uri + "model.keras", "promoted_at": _now(), "decision": decision, "history": history,
            "write_id": uuid.uuid4().hex}


def _swap(s3: Any, bucket: str, key: str, expected_etag: str | None, make: Any) -> bool:
    """Write ``make(current)`` as the pointer ``key`` if its ETag is still ``expected_etag``."""
    with _guard(s3, bucket, key) as conditional:
        current, etag = _read(s3, bucket, key)
        if etag != expected_etag:
            return False
        return _put(s3, bucket, key, make(current), etag, conditional=conditional)


def promote(s3: Any, bucket: str, version: ModelVersion | dict[str, Any], decision: Decision | None, *,
            expected_etag: str | None, prefix: str = PREFIX) -> bool:
    """Make ``version`` the champion of its dataset if that pointer still has ``expected_etag`` (None: absent).

    Returns False, writing nothing, when another promotion got there first; True when written, or when
    ``version`` already is the champion (a retried promotion). Does not judge the model: see :func:`gate`.
    """
    v = _as_version(version)
    key = _pointer_key(v, prefix)
    current, _ = _read(s3, bucket, key)
    if current and current.get("version") == v.version:
        return True
    decided = decision.to_dict() if decision else None
    return _swap(s3, bucket, key, expected_etag, lambda prev: _champion_doc(v, decided, prev))


def _check_observed(v: ModelVersion, observed: Pointer, champion_predictions: pd.DataFrame | None) -> None:
    _pointer_key(v, PREFIX)
    if observed.dataset is None or dataset_uri(observed.dataset) != v.dataset:
        raise ValueError(f"observed is the champion pointer of {observed.dataset or 'no particular dataset'}, but "
                         f"challenger {v.version} was trained on {v.dataset}: a challenger is gated only against "
                         f"the champion of its own dataset; pass read_champion(s3, bucket, dataset={v.dataset!r})")
    current = observed.champion
    if (current is None) != (champion_predictions is None):
        state = "no champion" if current is None else f"champion {current.get('version')}"
        raise ValueError(f"champion_predictions must be None exactly when there is no champion; observed {state}")


def _smoke(s3: Any, v: ModelVersion, predictions: pd.DataFrame, d: Decision) -> Decision:
    """The decision after the fresh-process load check of the challenger's exported model."""
    result: SmokeResult = check_version(s3, v.uri, predictions)
    if result.ok:
        return dataclasses.replace(d, smoke=result.to_dict())
    return dataclasses.replace(d, promote=False, smoke=result.to_dict(),
                               reason=f"not promoted: {result.reason} (the challenger had won: {d.reason})")


def gate(s3: Any, bucket: str, challenger: ModelVersion | dict[str, Any], challenger_predictions: pd.DataFrame,
         champion_predictions: pd.DataFrame | None, *, observed: Pointer, alpha: float = ALPHA,
         margin: float = MARGIN, class_names: list[str] | None = None, smoke: bool = True,
         prefix: str = PREFIX) -> Decision:
    """Decide on the challenger against its dataset's champion in ``observed``; if it wins, promote it atomically.

    ``observed`` is the :func:`read_champion` result (for the challenger's dataset) the caller scored the
    champion from; the prediction tables are the challenger's recorded ``test_predictions.csv`` and the
    champion's predictions on the same test split. The rule is :func:`scene.gate.decide`; a winner is then
    smoke-loaded in a fresh process (``smoke=False`` skips that, for registry tests with placeholder files).
    The decision is stored as ``decision.json`` / ``decision.md`` in the challenger's folder. If the pointer
    changed since ``observed``, nothing is promoted and the decision says so (re-run the gate).
    """
    v = _as_version(challenger)
    _check_observed(v, observed, champion_predictions)
    current = observed.champion
    if current and current.get("version") == v.version:
        return Decision(False, "challenger already is the champion", v.version, v.version, alpha=alpha,
                        margin=margin, dataset=v.dataset)
    d = decide(challenger_predictions, champion_predictions, challenger_collapsed=v.collapsed,
               random_init=v.random_init, synthetic_data=v.synthetic_data, alpha=alpha, margin=margin,
               challenger=v.version, champion=current.get("version") if current else None, class_names=class_names,
               dataset=v.dataset)
    if d.promote and smoke:
        d = _smoke(s3, v, challenger_predictions, d)
    if d.promote and not promote(s3, bucket, v, d, expected_etag=observed.etag, prefix=prefix):
        now = champion(s3, bucket, dataset=v.dataset, prefix=prefix)
        d = dataclasses.replace(d, promote=False, reason=(
            f"not promoted: the champion pointer of {v.dataset} changed while gating (now "
            f"{now and now.get('version')}); re-run the gate against the new champion (the challenger had won: "
            f"{d.reason})"))
    write_decision(s3, v, d)
    return d


def promote_version(s3: Any, bucket: str, version_id: str, reason: str = "manual", *, force: bool = False,
                    prefix: str = PREFIX) -> dict[str, Any]:
    """Make a registered version its dataset's champion by hand.

    A collapsed, random-init or synthetic-data version is refused unless ``force`` (``--force``): this is the
    only way such a model becomes champion.
    """
    v = ModelVersion.from_dict(get_version(s3, bucket, version_id, prefix=prefix))
    if v.flags and not force:
        raise RegistryError(f"model version {version_id!r} is {' and '.join(v.flags)}, so it is never promoted "
                            "automatically; refusing to promote it — pass force=True (--force) if you really mean to")
    key = _pointer_key(v, prefix)
    doc, etag = _read(s3, bucket, key)
    previous = doc.get("version") if doc else None
    forced = (" (forced" + (f": {', '.join(v.flags)}" if v.flags else "") + ")") if force else ""
    d = Decision(True, f"manual promotion: {reason}{forced}", v.version, previous, dataset=v.dataset)
    if not promote(s3, bucket, v, d, expected_etag=etag, prefix=prefix):
        raise ConflictError(f"s3://{bucket}/{key} changed while promoting {version_id!r}; check `scene models list` "
                            "and retry")
    write_decision(s3, v, d)
    return champion(s3, bucket, dataset=v.dataset, prefix=prefix) or {}


def _rollback_dataset(s3: Any, bucket: str, dataset: str | None, prefix: str) -> str:
    if dataset is not None:
        return dataset_uri(dataset)
    docs = champions(s3, bucket, prefix=prefix)
    if not docs:
        raise RegistryError(f"s3://{bucket}/{_prefix(prefix)}{CHAMPIONS}: there is no champion, so nothing to "
                            "roll back")
    if len(docs) > 1:
        raise RegistryError(f"champions exist for {len(docs)} datasets ({', '.join(sorted(docs))}); pass "
                            "dataset= (--data URI) to say whose champion to roll back")
    return next(iter(docs))


def rollback(s3: Any, bucket: str, *, dataset: str | None = None, prefix: str = PREFIX) -> dict[str, Any]:
    """Restore a dataset's previous champion from its pointer's history; returns the new champion document.

    Without ``dataset``, the only dataset that has a champion (an error names them when there are several).
    """
    uri = _rollback_dataset(s3, bucket, dataset, prefix)
    key = champion_key(uri, prefix)
    doc, etag = _read(s3, bucket, key)
    where = f"s3://{bucket}/{key}"
    if doc is None:
        raise RegistryError(f"{where}: there is no champion for {uri}, so nothing to roll back")
    history = doc.get("history") or []
    if not history:
        raise RegistryError(f"{where}: champion {doc.get('version')} has no previous champion to roll back to; "
                            "promote a version by hand with `scene models promote VERSION`")
    prev, rest = history[0], history[1:]
    v = ModelVersion.from_dict(get_version(s3, bucket, prev["version"], prefix=prefix))
    decided = Decision(True, f"rollback from {doc.get('version')}", v.version, doc.get("version"),
                       dataset=uri).to_dict()
    if not _swap(s3, bucket, key, etag, lambda _: _champion_doc(v, decided, None, rest)):
        raise ConflictError(f"{where} changed during the rollback; check `scene models list` and retry")
    return champion(s3, bucket, dataset=uri, prefix=prefix) or {}


__all__ = [
    "ALPHA", "CHAMPIONS", "MARGIN", "PREFIX", "REGISTRY", "ConflictError", "Decision", "GateError", "ModelVersion",
    "Paired", "Pointer", "RegistryError", "champion", "champion_key", "champions", "conditional_writes",
    "dataset_uri", "decide", "gate", "get_version", "list_versions", "pair", "per_class_recall", "promote",
    "promote_version", "read_champion", "read_decision", "register", "rollback", "select_challenger", "show",
    "version_id", "write_decision",
]
