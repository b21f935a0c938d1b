"""The storage-event bridge: S3 bucket notifications in, one Prefect event per dataset burst out.

Flow of a notification::

    S3 / JuiceFS gateway --POST /notify (Bearer token)--> serve() --parse_notification()--> ObjectEvents
        --BridgeConfig.reason_to_ignore()--> matching ObjectEvents --Batcher--> one event per dataset root
        --emit_prefect_event()--> POST {PREFECT_API_URL}/events --> deployment trigger on scene.data.arrived

Accepted notification bodies: AWS S3 event JSON (``{"Records": [{"eventName": "ObjectCreated:Put", "s3":
{...}}]}``, object keys URL-encoded), MinIO/JuiceFS webhook bodies (the same ``Records`` plus ``EventName``
and ``Key``; see :mod:`scene.stack`) and the S3 ``s3:TestEvent`` (accepted, nothing in it).

A *dataset root* is the first folder under the data prefix: ``datasets/intel/seg_train/sea/1.jpg`` belongs
to ``datasets/intel/``. Keys with ``.``/``..``/empty path segments or control characters are ignored (with the
reason logged), so no event can name a root such as ``datasets/../``.

Keys arrive URL-encoded form-style in ``Records[].s3.object.key`` (AWS and MinIO alike: a space is ``+``)
and are decoded with ``unquote_plus``; the top-level ``Key`` of a MinIO webhook body (``bucket/object``) is
already decoded by the server (MinIO ``WebhookTarget.send``: ``url.QueryUnescape``) and is used as is.

``GET /health`` answers ``{"status": "ok"}`` to anyone; the counters come only with the bearer token.

The :class:`Batcher` collects the image objects of each root and emits one event
when no new object arrived for ``quiet_seconds`` (or ``max_wait_seconds`` after the first one, so a slow
trickle still fires), or at once when the ``_READY`` marker lands anywhere under the root (a marker always
emits, even with no new images pending). Events that cannot reach Prefect are kept and retried.

Events reach Prefect without importing it: ``POST {api}/events`` with a JSON list of events (the route
``prefect.server.api.events.create_events``, answers 204). An OSS server without auth needs no header;
``PREFECT_SERVER_API_AUTH_STRING`` servers need ``Authorization: Basic base64(auth_string)``, Prefect Cloud
``Authorization: Bearer <api key>``. Automations (deployment triggers) see an event as soon as it is
accepted; ``POST {api}/events/filter`` shows it once the server's event persister has flushed it (every
``PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL`` = 5 s by default; 2.5-5 s on the local stack).

Pending batches live in memory: if the bridge dies with a batch pending, that batch is lost (the polling
sensor ``flows/watch.py`` and the weekly schedule cover that). Notifications sent while the bridge is down
are queued by the gateway and delivered when it is back.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import http.server
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from scene.metadata import IMAGE_SUFFIXES

log = logging.getLogger("scene.events")

EVENT_NAME = "scene.data.arrived"
READY_MARKER = "_READY"
MAX_KEYS = 1000  # keys listed in one event's payload (``count`` has the full number)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never route through a proxy


class BadNotification(ValueError):
    """A notification body is not a bucket notification; the message says what is wrong."""


class EmitError(RuntimeError):
    """An event could not be delivered to the Prefect API; the message says where and why."""


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


def unsafe_key(key: str) -> str:
    """Why a key cannot name data (``.``/``..``/empty segments, control characters), or ``""`` when it can."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "key contains control characters"
    if any(part in ("", ".", "..") for part in key.split("/")[:-1]) or key.rsplit("/", 1)[-1] in (".", ".."):
        return "key has a '.', '..' or empty path segment"
    return ""


def matching(cfg: BridgeConfig, events: Iterable[ObjectEvent]) -> list[ObjectEvent]:
    """The events that count for retraining."""
    return [ev for ev in events if cfg.reason_to_ignore(ev) is None]


# --------------------------------------------------------------------------------------------- events


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def dataset_event(cfg: BridgeConfig, bucket: str, root: str, keys: Iterable[str], reason: str = "") -> dict:
    """The ``scene.data.arrived`` Prefect event (JSON-able dict) for new objects under one dataset root."""
    keys = list(dict.fromkeys(keys))
    payload: dict[str, Any] = {
        "bucket": bucket,
        "prefix": root,
        "data": f"s3://{bucket}/{root}",
        "keys": keys[:MAX_KEYS],
        "count": len(keys),
    }
    if reason:
        payload["reason"] = reason
    return {
        "id": str(uuid.uuid4()),
        "occurred": _now_iso(),
        "event": cfg.event_name,
        "resource": {"prefect.resource.id": f"scene.dataset.{bucket}/{root}", "scene.bucket": bucket,
                     "scene.prefix": root},
        "related": [],
        "payload": payload,
    }


def _auth_headers(api_key: str | None, auth_string: str | None) -> dict[str, str]:
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    return {}


def prefect_request(api_url: str, path: str, body: Any, *, api_key: str | None = None,
                    auth_string: str | None = None, timeout: float = 10.0) -> tuple[int, Any]:
    """POST JSON to the Prefect API; (status, parsed JSON or None). Raises :class:`EmitError` if unreachable."""
    url = api_url.rstrip("/") + path
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               **_auth_headers(api_key, auth_string)}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise EmitError(f"Prefect API {url}: cannot connect ({reason}); is the server running? "
                        "Check PREFECT_API_URL") from err
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def emit_prefect_event(api_url: str, event: dict, *, api_key: str | None = None, auth_string: str | None = None,
                       timeout: float = 10.0) -> dict:
    """Send one event to the Prefect API (``POST {api}/events``); return it (with ``id``/``occurred`` set).

    ``event`` needs ``event`` (name) and ``resource`` (with ``prefect.resource.id``). Raises
    :class:`EmitError` naming the URL and the server's answer when it is not accepted.
    """
    if not api_url:
        raise EmitError("no Prefect API URL to send events to; set PREFECT_API_URL (http://HOST:PORT/api)")
    if not event.get("event") or not isinstance(event.get("resource"), dict) \
            or "prefect.resource.id" not in event["resource"]:
        raise EmitError(f"not a Prefect event: needs 'event' and resource['prefect.resource.id'], got {event}")
    event = {"id": str(uuid.uuid4()), "occurred": _now_iso(), "related": [], "payload": {}, **event}
    status, body = prefect_request(api_url, "/events", [event], api_key=api_key, auth_string=auth_string,
                                   timeout=timeout)
    if status not in (200, 201, 204):
        hint = " (check PREFECT_API_KEY / PREFECT_API_AUTH_STRING)" if status in (401, 403) else ""
        raise EmitError(f"Prefect API {api_url.rstrip('/')}/events answered {status}{hint}: {str(body)[:500]}")
    return event


def read_events(api_url: str, name: str = EVENT_NAME, resource_prefix: str | None = None, limit: int = 50,
                **auth: Any) -> list[dict]:
    """Recent events named ``name`` (newest first) from ``POST {api}/events/filter`` (checks and tests)."""
    flt: dict[str, Any] = {"event": {"name": [name]}, "order": "DESC"}
    if resource_prefix:
        flt["resource"] = {"id_prefix": [resource_prefix]}
    status, body = prefect_request(api_url, "/events/filter", {"filter": flt, "limit": limit}, **auth)
    if status != 200 or not isinstance(body, dict):
        raise EmitError(f"Prefect API {api_url.rstrip('/')}/events/filter answered {status}: {str(body)[:500]}")
    return list(body.get("events", []))


def bridge_stats(url: str, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """A running bridge's counters (``GET {url}/health`` with the bearer token); raises :class:`EmitError`."""
    req = urllib.request.Request(url.rstrip("/") + "/health", headers={"Authorization": f"Bearer {token}"})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise EmitError(f"event bridge {url}: no health answer ({getattr(err, 'reason', err)}); is it running?") \
            from err
    if "emitted" not in body:
        raise EmitError(f"event bridge {url}: the token was not accepted, so it reports no counters; "
                        "pass the bridge's SCENE_EVENTS_TOKEN")
    return body


# -------------------------------------------------------------------------------------------- batching


@dataclass
class _Pending:
    bucket: str
    root: str
    first: float
    last: float
    keys: dict[str, None] = field(default_factory=dict)  # ordered set of image keys
    ready: bool = False  # a marker landed: emit now
    not_before: float = 0.0  # retry delay after a failed emission
    failures: int = 0


Emitter = Callable[[dict], Any]


class Batcher:
    """Debounces matching object events into one emission per dataset root (thread-safe).

    ``add()`` takes matching events (see :func:`matching`); ``tick()`` emits the roots that have been quiet
    for ``quiet_seconds`` (call it periodically; :func:`serve` does). A ``_READY`` marker emits from
    ``add()`` at once. ``emit(event)`` gets the :func:`dataset_event` dict; if it raises, the batch is kept
    and retried with a growing delay (2 s .. 60 s). ``clock`` is injectable for tests.
    """

    def __init__(self, cfg: BridgeConfig, emit: Emitter, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self.emitted = 0
        self.emit_failures = 0

    @property
    def pending(self) -> int:
        """Dataset roots waiting to be emitted."""
        with self._lock:
            return len(self._pending)

    def pending_roots(self) -> list[str]:
        """``bucket/root`` of each waiting dataset root."""
        with self._lock:
            return [f"{b}/{r}" for b, r in self._pending]

    def add(self, events: Iterable[ObjectEvent]) -> int:
        """Record matching events; emit at once for roots whose marker landed. Returns events recorded."""
        now = self._clock()
        n = 0
        with self._lock:
            for ev in events:
                root = self.cfg.root_of(ev.key)
                if root is None:
                    continue
                p = self._pending.get((ev.bucket, root))
                if p is None:
                    p = self._pending[(ev.bucket, root)] = _Pending(ev.bucket, root, first=now, last=now)
                p.last = now
                if self.cfg.is_marker(ev.key):
                    p.ready = True
                else:
                    p.keys[ev.key] = None
                n += 1
        self._emit_due(now, markers_only=True)
        return n

    def tick(self) -> int:
        """Emit every root that is due (quiet long enough, marker seen, or waited too long); returns emitted."""
        return self._emit_due(self._clock())

    def flush(self) -> int:
        """Emit everything pending now (on shutdown); returns the number emitted."""
        with self._lock:
            for p in self._pending.values():
                p.ready, p.not_before = True, 0.0
        return self._emit_due(self._clock())

    def _due(self, p: _Pending, now: float, markers_only: bool) -> bool:
        if now < p.not_before:
            return False
        if p.ready:
            return True
        if markers_only:
            return False
        return now - p.last >= self.cfg.quiet_seconds or now - p.first >= self.cfg.max_wait_seconds

    def _emit_due(self, now: float, markers_only: bool = False) -> int:
        with self._lock:
            due = [k for k, p in self._pending.items() if self._due(p, now, markers_only)]
            batches = [self._pending.pop(k) for k in due]
        done = 0
        for p in batches:
            reason = "ready marker" if p.ready else (
                "quiet period" if now - p.last >= self.cfg.quiet_seconds else "maximum wait")
            event = dataset_event(self.cfg, p.bucket, p.root, p.keys, reason)
            try:
                self._emit(event)
            except Exception as err:  # keep the batch; the next tick retries
                self._requeue(p, now)
                self.emit_failures += 1
                log.warning("could not emit %s for s3://%s/%s (%d new objects), retrying in %.0fs: %s",
                            self.cfg.event_name, p.bucket, p.root, len(p.keys), p.not_before - now, err)
                continue
            done += 1
            self.emitted += 1
            log.info("emitted %s for s3://%s/%s: %d new objects (%s)", self.cfg.event_name, p.bucket, p.root,
                     len(p.keys), reason)
        return done

    def _requeue(self, p: _Pending, now: float) -> None:
        p.failures += 1
        p.ready = True
        p.not_before = now + min(60.0, 2.0 * 2 ** (p.failures - 1))
        with self._lock:
            newer = self._pending.get((p.bucket, p.root))
            if newer is not None:  # objects arrived meanwhile: merge them into the retried batch
                p.keys.update(newer.keys)
                p.last = max(p.last, newer.last)
            self._pending[(p.bucket, p.root)] = p


# --------------------------------------------------------------------------------------------- server


@dataclass
class Counters:
    """What the bridge has seen (``GET /health``)."""

    received: int = 0  # notification POSTs
    accepted: int = 0  # POSTs answered 200
    rejected: int = 0  # POSTs refused (401, 400, 411, 413, 404)
    objects: int = 0  # object events that counted
    ignored: int = 0  # object events filtered out
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class BridgeServer:
    """A running bridge: ``url`` (``http://HOST:PORT``), ``notify_url``, ``stats()``, ``stop()``, ``wait()``."""

    def __init__(self, cfg: BridgeConfig, httpd: http.server.ThreadingHTTPServer, batcher: Batcher,
                 counters: Counters, tick_seconds: float) -> None:
        self.cfg = cfg
        self.batcher = batcher
        self.counters = counters
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self.host, self.port = str(host), int(port)
        self.url = f"http://{self.host}:{self.port}"
        self.notify_url = f"{self.url}/notify"
        self._stop = threading.Event()
        self._conns: set[Any] = set()  # open client sockets, closed by stop() (keep-alive would outlive it)
        self._conns_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                             name="scene-events-http"),
            threading.Thread(target=self._ticker, args=(tick_seconds,), daemon=True, name="scene-events-tick"),
        ]

    def _start(self) -> None:
        for t in self._threads:
            t.start()

    def _ticker(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.batcher.tick()
            except Exception:  # never let the ticker die
                log.exception("batcher tick failed")

    def _track(self, sock: Any, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(sock)

    def stats(self) -> dict[str, Any]:
        """The counters, plus emitted/pending from the batcher."""
        c = self.counters
        with c.lock:
            out = {"received": c.received, "accepted": c.accepted, "rejected": c.rejected, "objects": c.objects,
                   "ignored": c.ignored}
        out.update(emitted=self.batcher.emitted, emit_failures=self.batcher.emit_failures,
                   pending=self.batcher.pending, pending_roots=self.batcher.pending_roots())
        return out

    def stop(self, flush: bool = False) -> None:
        """Stop serving (pending batches are dropped unless ``flush``); safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for sock in conns:  # a stopped bridge must not keep answering on keep-alive connections
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        if flush:
            self.batcher.flush()
        log.info("event bridge on %s stopped (%d roots pending)", self.url, self.batcher.pending)

    def wait(self) -> None:
        """Block until :meth:`stop` is called (from another thread or a signal handler)."""
        while not self._stop.wait(1.0):
            pass


def _make_handler(cfg: BridgeConfig, batcher: Batcher, counters: Counters, holder: dict[str, BridgeServer]
                  ) -> type[http.server.BaseHTTPRequestHandler]:
    expected = f"Bearer {cfg.token}".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "scene-events/1"
        protocol_version = "HTTP/1.1"  # keep-alive: the gateway sends one POST per object
        timeout = 15  # seconds a client may take to send its request (slow clients do not hold a thread)

        def setup(self) -> None:
            super().setup()
            holder["server"]._track(self.connection, True)

        def finish(self) -> None:
            holder["server"]._track(self.connection, False)
            with contextlib.suppress(OSError):
                super().finish()

        def _reply(self, status: int, body: dict[str, Any], close: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _reject(self, status: int, why: str, close: bool = False) -> None:
            counters.bump(rejected=1)
            log.warning("rejected notification from %s: %s (%d)", self.client_address[0], why, status)
            self._reply(status, {"error": why}, close=close)

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path in ("/health", "/healthz"):  # the counters only for the token holder
                given = (self.headers.get("Authorization") or "").strip().encode()
                stats = holder["server"].stats() if hmac.compare_digest(given, expected) else {}
                self._reply(200, {"status": "ok", **stats})
            else:
                self._reply(404, {"error": f"no such page {path!r}; POST /notify, GET /health"})

        def do_HEAD(self) -> None:  # reachability probes
            self._reply(200, {})

        def do_POST(self) -> None:
            try:
                self._post()
            except TimeoutError:
                with contextlib.suppress(Exception):
                    self._reject(408, f"client sent its body too slowly (over {self.timeout}s)", close=True)
            except Exception as err:  # the server must survive anything
                log.exception("notification from %s failed", self.client_address[0])
                with contextlib.suppress(Exception):
                    self._reply(500, {"error": f"internal error: {type(err).__name__}"}, close=True)

        def _post(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            counters.bump(received=1)
            if path not in ("/notify", "/"):
                self._reject(404, f"no such endpoint {path!r}; notifications go to POST /notify", close=True)
                return
            given = (self.headers.get("Authorization") or "").strip().encode()
            if not hmac.compare_digest(given, expected):
                self._reject(401, "missing or wrong bearer token" if given else "no Authorization header",
                             close=True)
                return
            length_text = self.headers.get("Content-Length")
            if length_text is None:
                self._reject(411, "no Content-Length header", close=True)
                return
            try:
                length = int(length_text)
                if length < 0:
                    raise ValueError
            except ValueError:
                self._reject(400, f"bad Content-Length {length_text[:40]!r}", close=True)
                return
            if length > cfg.max_body_bytes:
                self._reject(413, f"body of {length} bytes is over the {cfg.max_body_bytes}-byte limit", close=True)
                return
            body = self.rfile.read(length)
            if len(body) < length:
                self._reject(400, f"body ended after {len(body)} of {length} bytes", close=True)
                return
            try:
                events = parse_notification(body)
            except BadNotification as err:
                self._reject(400, f"malformed notification: {err}")
                return
            counted: list[ObjectEvent] = []
            for ev in events:
                why = cfg.reason_to_ignore(ev)
                if why is None:
                    counted.append(ev)
                    log.info("object s3://%s/%s (%s, %d bytes) counts for %s", ev.bucket, ev.key, ev.event_name,
                             ev.size, cfg.root_of(ev.key))
                else:  # repr: a hostile key must not forge log lines
                    log.info("ignored %r in bucket %r: %s", ev.key, ev.bucket, why)
            counters.bump(accepted=1, objects=len(counted), ignored=len(events) - len(counted))
            self._reply(200, {"accepted": len(counted), "ignored": len(events) - len(counted)})
            batcher.add(counted)  # after replying: a marker's emission must not delay the gateway

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.client_address[0], format % args)

    return Handler


def serve(cfg: BridgeConfig, host: str = "127.0.0.1", port: int = 8787, *, emit: Emitter | None = None,
          clock: Callable[[], float] = time.monotonic, tick_seconds: float | None = None) -> BridgeServer:
    """Start the bridge in background threads and return its handle (``port=0``: any free port).

    ``emit``: where events go (default: :func:`emit_prefect_event` to ``cfg.prefect_api_url``).
    ``tick_seconds``: how often quiet roots are checked (default: quiet_seconds/5, between 0.05 and 1 s).
    """
    if emit is None:
        if not cfg.prefect_api_url:
            raise ValueError("serve(): no Prefect API URL in the config and no emit function; set PREFECT_API_URL")
        api = cfg.prefect_api_url

        def emit(event: dict) -> Any:
            return emit_prefect_event(api, event, api_key=cfg.prefect_api_key, auth_string=cfg.prefect_auth_string)

    batcher = Batcher(cfg, emit, clock=clock)
    counters = Counters()
    every = tick_seconds if tick_seconds is not None else min(1.0, max(0.05, cfg.quiet_seconds / 5))
    holder: dict[str, BridgeServer] = {}
    handler = _make_handler(cfg, batcher, counters, holder)
    try:
        httpd = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise OSError(f"event bridge: cannot listen on {host}:{port}: {err.strerror or err}") from err
    httpd.daemon_threads = True
    server = holder["server"] = BridgeServer(cfg, httpd, batcher, counters, every)
    server._start()
    log.info("event bridge listening on %s/notify: bucket %s, prefix %r, quiet %.1fs, marker %r, events to %s",
             server.url, cfg.bucket, cfg.prefix, cfg.quiet_seconds, cfg.ready_marker,
             cfg.prefect_api_url or "a custom emitter")
    return server


# ---------------------------------------------------------------------------------- polling snapshots


def polling_config(bucket: str, prefix: str, **kw: Any) -> BridgeConfig:
    """A :class:`BridgeConfig` for polling (no webhook, so no token): filtering and event shape only."""
    return BridgeConfig(token="(polling: no webhook)", bucket=bucket, prefix=prefix, **kw)


def snapshot(s3: Any, cfg: BridgeConfig) -> dict[str, str]:
    """``{key: etag}`` of the image objects under ``s3://cfg.bucket/cfg.prefix`` inside dataset folders."""
    from scene.storage import explain

    bucket = cfg.bucket
    out: dict[str, str] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=cfg.prefix):
            for obj in page.get("Contents", []):
                ev = ObjectEvent(bucket, obj["Key"], int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'),
                                 "ObjectCreated:Put")
                if cfg.reason_to_ignore(ev) is None and not cfg.is_marker(ev.key):
                    out[ev.key] = ev.etag
    except Exception as err:
        raise explain(err, f"s3://{bucket}/{cfg.prefix}", getattr(getattr(s3, "meta", None), "endpoint_url", None)) \
            from err
    return out


def changed_roots(cfg: BridgeConfig, old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """``{root: [keys new or with a changed ETag]}`` between two snapshots (removed keys do not count)."""
    roots: dict[str, list[str]] = {}
    for key, etag in sorted(new.items()):
        if old.get(key) != etag:
            root = cfg.root_of(key)
            if root is not None:
                roots.setdefault(root, []).append(key)
    return roots
