"""Bucket notifications in: parse S3/MinIO/JuiceFS bodies into :class:`ObjectEvent` and decide which count.

Accepted notification bodies: AWS S3 event JSON (``{"Records": [{"eventName": "ObjectCreated:Put", "s3":
{...}}]}``, object keys URL-encoded), MinIO/JuiceFS webhook bodies (the same ``Records`` plus ``EventName``
and ``Key``; see :mod:`scene.ops.stack`) and the S3 ``s3:TestEvent`` (accepted, nothing in it).

A *dataset root* is the first folder under the data prefix: ``datasets/intel/seg_train/sea/1.jpg`` belongs
to ``datasets/intel/``. Keys with ``.``/``..``/empty path segments or control characters are ignored (with the
reason logged), so no event can name a root such as ``datasets/../``.

Keys arrive URL-encoded form-style in ``Records[].s3.object.key`` (AWS and MinIO alike: a space is ``+``)
and are decoded with ``unquote_plus``; the top-level ``Key`` of a MinIO webhook body (``bucket/object``) is
already decoded by the server (MinIO ``WebhookTarget.send``: ``url.QueryUnescape``) and is used as is.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scene.data.scope import unsafe_key
from scene.metadata import IMAGE_SUFFIXES

EVENT_NAME = "scene.data.arrived"
READY_MARKER = "_READY"
KEY_SAMPLE = 100  # keys kept per pending dataset root and listed in its event (``count`` has the full number)


class BadNotification(ValueError):
    """A notification body is not a bucket notification; the message says what is wrong."""


@dataclass(frozen=True)
class ObjectEvent:
    """One object-level event from a bucket notification (``key`` is decoded)."""

    bucket: str
    key: str
    size: int
    etag: str
    event_name: str  # as sent: "ObjectCreated:Put" (AWS) or "s3:ObjectCreated:Put" (MinIO)

    @property
    def created(self) -> bool:
        """Whether this is an object-created event (put, copy, post, multipart completion)."""
        return self.event_name.removeprefix("s3:").startswith("ObjectCreated:")


# ------------------------------------------------------------------------------------------- parsing


def _get(obj: Any, path: str, where: str) -> Any:
    """``obj[a][b]...`` for ``path="a.b"``, raising :class:`BadNotification` naming the missing field."""
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            raise BadNotification(f"{where}: expected an object at {part!r} of {path!r}, got {type(cur).__name__}")
        if part not in cur:
            raise BadNotification(f"{where}: missing field {path!r}")
        cur = cur[part]
    return cur


def _record(rec: Any, where: str) -> ObjectEvent:
    if not isinstance(rec, dict):
        raise BadNotification(f"{where}: expected an object, got {type(rec).__name__}")
    name = _get(rec, "eventName", where)
    bucket = _get(rec, "s3.bucket.name", where)
    key = _get(rec, "s3.object.key", where)
    for label, value in (("eventName", name), ("s3.bucket.name", bucket), ("s3.object.key", key)):
        if not isinstance(value, str) or not value:
            raise BadNotification(f"{where}.{label}: expected a non-empty string, got {value!r}")
    obj = rec["s3"]["object"]
    size = obj.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise BadNotification(f"{where}.s3.object.size: expected an integer, got {size!r}")
    try:
        size = int(size)
    except ValueError:
        raise BadNotification(f"{where}.s3.object.size: expected an integer, got {size!r}") from None
    etag = obj.get("eTag", obj.get("etag", ""))
    if not isinstance(etag, str):
        raise BadNotification(f"{where}.s3.object.eTag: expected a string, got {etag!r}")
    # S3 and MinIO URL-encode keys form-style (a space is '+', a literal '+' is '%2B').
    return ObjectEvent(bucket=bucket, key=urllib.parse.unquote_plus(key), size=size, etag=etag.strip('"'),
                       event_name=name)


def parse_notification(body: bytes) -> list[ObjectEvent]:
    """The object events in an S3 (AWS) or MinIO/JuiceFS notification body; raises :class:`BadNotification`."""
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as err:
        raise BadNotification(f"body is not UTF-8 text: {err}") from None
    except ValueError as err:
        raise BadNotification(f"body is not JSON: {err}") from None
    except RecursionError:
        raise BadNotification("body is not usable JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadNotification(f"expected a JSON object with 'Records', got a JSON {type(doc).__name__}")
    if doc.get("Event") == "s3:TestEvent":  # sent by AWS when a notification configuration is saved
        return []
    records = doc.get("Records")
    if records is None:
        name, key = doc.get("EventName"), doc.get("Key")
        if isinstance(name, str) and isinstance(key, str) and "/" in key:  # MinIO body without Records
            bucket, _, obj_key = key.partition("/")  # already decoded by MinIO: do not unquote twice
            return [ObjectEvent(bucket=bucket, key=obj_key, size=0, etag="", event_name=name)]
        keys = ", ".join(sorted(map(str, doc))[:8]) or "none"
        raise BadNotification(f"not a bucket notification: no 'Records' list (top-level keys: {keys})")
    if not isinstance(records, list):
        raise BadNotification(f"'Records' must be a list, got {type(records).__name__}")
    return [_record(rec, f"Records[{i}]") for i, rec in enumerate(records)]


# ------------------------------------------------------------------------------------------ filtering


def _default_suffixes() -> tuple[str, ...]:
    return (*IMAGE_SUFFIXES, READY_MARKER)


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge accepts, how it batches and where it sends events."""

    token: str = field(repr=False)  # the webhook's bearer token: never logged
    bucket: str = "scene-data"
    prefix: str = "datasets/"  # dataset roots are the folders right under it
    suffixes: tuple[str, ...] = field(default_factory=_default_suffixes)  # image suffixes + the marker name
    quiet_seconds: float = 30.0  # emit when no new object arrived under a root for this long
    ready_marker: str = READY_MARKER  # an object with this name under a root emits at once
    max_body_bytes: int = 1 << 20
    prefect_api_url: str | None = None  # http://HOST:PORT/api; None: no emission possible (tests inject one)
    event_name: str = EVENT_NAME
    max_wait_seconds: float = 600.0  # emit at the latest this long after a root's first pending object
    prefect_api_key: str | None = field(default=None, repr=False)  # Prefect Cloud: sent as Bearer
    prefect_auth_string: str | None = field(default=None, repr=False)  # PREFECT_SERVER_API_AUTH_STRING: Basic
    key_sample: int = KEY_SAMPLE  # keys kept per pending root (memory bound); the event's ``count`` has them all

    def __post_init__(self) -> None:
        if not self.token or not self.token.strip():
            raise ValueError("BridgeConfig.token: empty; set a webhook token (SCENE_EVENTS_TOKEN)")
        if not self.bucket:
            raise ValueError("BridgeConfig.bucket: empty; name the data bucket")
        if self.prefix and not self.prefix.endswith("/"):
            object.__setattr__(self, "prefix", self.prefix + "/")
        if self.prefix.startswith("/"):
            raise ValueError(f"BridgeConfig.prefix {self.prefix!r}: a key prefix has no leading '/'")
        if self.quiet_seconds < 0:
            raise ValueError(f"BridgeConfig.quiet_seconds: must be >= 0, got {self.quiet_seconds}")
        if self.max_wait_seconds < self.quiet_seconds:
            object.__setattr__(self, "max_wait_seconds", float(self.quiet_seconds))
        if self.max_body_bytes < 1024:
            raise ValueError(f"BridgeConfig.max_body_bytes: must be >= 1024, got {self.max_body_bytes}")
        if self.key_sample < 1:
            raise ValueError(f"BridgeConfig.key_sample: must be >= 1, got {self.key_sample}")
        object.__setattr__(self, "suffixes", tuple(s.lower() for s in self.suffixes))

    def root_of(self, key: str) -> str | None:
        """The dataset root (``<prefix><folder>/``) of a key, or None when the key is not inside one
        (or is not a safe key: see :func:`unsafe_key`)."""
        if not key.startswith(self.prefix) or unsafe_key(key):
            return None
        folder, sep, rest = key[len(self.prefix):].partition("/")
        return f"{self.prefix}{folder}/" if folder and sep and rest else None

    def is_marker(self, key: str) -> bool:
        """Whether the key is the ready marker."""
        return key.rsplit("/", 1)[-1] == self.ready_marker

    def reason_to_ignore(self, ev: ObjectEvent) -> str | None:
        """Why this event does not count (in plain words), or None when it does."""
        if not ev.created:
            return f"event {ev.event_name} is not an object creation"
        if ev.bucket != self.bucket:
            return f"bucket {ev.bucket!r} is not the data bucket {self.bucket!r}"
        if not ev.key.startswith(self.prefix):
            return f"key is outside the data prefix {self.prefix!r}"
        unsafe = unsafe_key(ev.key)
        if unsafe:
            return unsafe
        if self.root_of(ev.key) is None:
            return f"key is not inside a dataset folder ({self.prefix}<name>/...)"
        if self.is_marker(ev.key):
            return None
        images = self.image_suffixes
        if not images or not ev.key.lower().endswith(images):
            return f"not an image (suffixes {', '.join(images)}) nor the {self.ready_marker} marker"
        return None

    @property
    def image_suffixes(self) -> tuple[str, ...]:
        """The suffixes that make an object an image (``suffixes`` without the marker name)."""
        return tuple(s for s in self.suffixes if s != self.ready_marker.lower())


def matching(cfg: BridgeConfig, events: Iterable[ObjectEvent]) -> list[ObjectEvent]:
    """The events that count for retraining."""
    return [ev for ev in events if cfg.reason_to_ignore(ev) is None]


def polling_config(bucket: str, prefix: str, **kw: Any) -> BridgeConfig:
    """A :class:`BridgeConfig` without a webhook (so no token): for polling and reconciling, filtering only."""
    return BridgeConfig(token="(polling: no webhook)", bucket=bucket, prefix=prefix, **kw)
