"""The registry's object store: whole-object JSON reads and compare-and-swap writes of one S3 object.

Every registry document (``registry.json``, a champion pointer) is written as one whole object by a
compare-and-swap: read the object and its ETag, build the new document, write it only if the ETag is unchanged.
See :mod:`scene.registry` for which stores honour conditional PUTs and how writers are serialised where they don't.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scene.data import storage
from scene.data.retries import call as _retry
from scene.errors import SceneError

PREFIX = "models/"  # registry root inside the artifact bucket
REGISTRY = "registry.json"
CHAMPIONS = "champions/"  # one pointer object per dataset under <prefix>champions/
LEASE_TTL_S = 30.0  # a lease older than this is considered abandoned (its holder died)
LEASE_SETTLE_S = 0.5  # wait between writing a lease and checking it survived
LEASE_TIMEOUT_S = 60.0  # give up acquiring a lease after this long
_NO_ETAG = '"' + "0" * 32 + '"'  # an ETag no object has (for the probe)
_LOST_RACE = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")  # S3 error codes of a failed CAS


class RegistryError(SceneError, ValueError):
    """A registry request that cannot be served; the message names the version or object and what to do."""


class ConflictError(RegistryError):
    """Another writer changed a registry object first; re-read and retry."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
        etag, body = _retry(s3, lambda: _get(s3, bucket, key))
    except Exception as err:
        if _code(err) in ("NoSuchKey", "404", "NotFound"):
            return None, None
        raise storage.explain(err, f"s3://{bucket}/{key}", _endpoint(s3)) from err
    try:
        return json.loads(body), etag
    except ValueError as err:
        raise RegistryError(f"s3://{bucket}/{key}: not valid JSON ({err}); restore it or delete it") from err


def _get(s3: Any, bucket: str, key: str) -> tuple[str, bytes]:
    obj = s3.get_object(Bucket=bucket, Key=key)
    return obj["ETag"], obj["Body"].read()


def _put(s3: Any, bucket: str, key: str, doc: Any, etag: str | None, *, conditional: bool) -> bool:
    """Write ``doc`` if the object still has ``etag`` (None: if it is still absent); False when it changed.

    ``conditional=False`` sends a plain PUT, for stores that reject the conditional headers (the caller holds
    a :func:`_guard` instead).
    """
    cond = ({"IfMatch": etag} if etag else {"IfNoneMatch": "*"}) if conditional else {}
    body = json.dumps(doc, indent=2).encode()
    try:
        _retry(s3, lambda: s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **cond))
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
        return datetime.fromisoformat(lease["expires"]) < datetime.now(UTC)
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
            expires = (datetime.now(UTC) + timedelta(seconds=ttl)).isoformat()
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

