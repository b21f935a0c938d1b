"""The storage-event bridge's HTTP server: S3 bucket notifications in, one Prefect event per dataset burst out.

Flow of a notification::

    S3 / JuiceFS gateway --POST /notify (Bearer token)--> serve() --parse_notification()--> ObjectEvents
        --BridgeConfig.reason_to_ignore()--> matching ObjectEvents --Batcher--> one event per dataset root
        --emit_prefect_event()--> POST {PREFECT_API_URL}/events --> deployment trigger on scene.data.arrived

Parsing and filtering: :mod:`scene.ops.notifications`; debouncing: :mod:`scene.ops.batcher`; the event and
its delivery: :mod:`scene.ops.prefect_events`. ``GET /health`` answers ``{"status": "ok"}`` to anyone; the
counters come only with the bearer token. Notifications sent while the bridge is down are queued by the
gateway and delivered when it is back.

Durability (``store``, :mod:`scene.ops.event_store`): the counted objects of a notification are committed to
SQLite before the 200 goes out, replayed into the batcher at start, and dropped once their event is delivered.
With ``confirm`` (a callable telling which change ids already have a retrain run), a delivered event stays in
the store until its run exists and is re-sent (:func:`scene.ops.prefect_events.resend_of`) every
``confirm_after`` seconds, at most ``max_resends`` times: an event the server accepted and then lost (restart)
or that found no trigger (``prefect deploy``) still starts its run. The server is the standard library's
threaded HTTP server (not Starlette/uvicorn).
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scene.ops.batcher import Batcher, Emitter, Fingerprint
from scene.ops.event_store import EventStore
from scene.ops.notifications import BadNotification, BridgeConfig, ObjectEvent, parse_notification
from scene.ops.prefect_events import emit_prefect_event, resend_of

Confirm = Callable[[list[str]], set[str]]  # change ids -> those a retrain run exists for

log = logging.getLogger("scene.events")


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
                 counters: Counters, tick_seconds: float, store: EventStore | None = None,
                 confirm: Confirm | None = None, confirm_after: float = 60.0, max_resends: int = 5,
                 emit: Emitter | None = None) -> None:
        self.cfg = cfg
        self.batcher = batcher
        self.counters = counters
        self.store = store
        self.ingest_lock = threading.Lock()  # persist + batch as one step (a tick must not drop an unbatched row)
        self._confirm = confirm
        self._confirm_after = confirm_after
        self._max_resends = max_resends
        self._emit = emit
        self.resent = 0
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
        if store is not None and confirm is not None:
            self._threads.append(threading.Thread(target=self._confirmer, args=(max(1.0, confirm_after / 4),),
                                                  daemon=True, name="scene-events-confirm"))

    def _start(self) -> None:
        for t in self._threads:
            t.start()

    def _ticker(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.batcher.tick()
            except Exception:  # never let the ticker die
                log.exception("batcher tick failed")

    def _confirmer(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.confirm_pass()
            except Exception as err:  # never let it die: the next pass retries
                log.warning("checking delivered events for their runs failed: %s: %s", type(err).__name__, err)

    def confirm_pass(self, now: float | None = None) -> dict[str, int]:
        """Forget delivered events whose run exists; re-send those without one after ``confirm_after`` s."""
        if self.store is None or self._confirm is None:
            return {}
        waiting = self.store.unconfirmed()
        if not waiting:
            return {}
        now = time.time() if now is None else now
        changes = {ev["id"]: (ev.get("payload") or {}).get("change") or ev["id"] for ev, _, _ in waiting}
        have = self._confirm(sorted(set(changes.values())))
        out = {"confirmed": 0, "resent": 0, "given_up": 0}
        for event, sent_at, attempts in waiting:
            change = changes[event["id"]]
            if change in have:
                self.store.confirmed(event["id"])
                out["confirmed"] += 1
            elif now - sent_at >= self._confirm_after:
                if attempts > self._max_resends:
                    log.error("no retrain run appeared for change %s of %s after %d deliveries: given up (the "
                              "reconcile announces it again)", change, event["payload"].get("data"), attempts)
                    self.store.confirmed(event["id"])
                    out["given_up"] += 1
                    continue
                again = resend_of(event, attempts)
                assert self._emit is not None
                self._emit(again)  # raises when not delivered: the next pass tries again
                self.store.resent(event["id"])
                self.resent += 1
                out["resent"] += 1
                log.warning("no retrain run for change %s of %s %.0f s after delivery: sent again as %s",
                            change, event["payload"].get("data"), now - sent_at, again["id"])
        return out

    def replay(self) -> int:
        """Put the objects persisted by an earlier bridge back into the batcher; how many."""
        if self.store is None:
            return 0
        rows = self.store.pending()
        if rows:
            with self.ingest_lock:
                self.batcher.add([ev for _, ev in rows], seq=max(seq for seq, _ in rows))
            log.info("replayed %d objects persisted before the last stop into %d pending roots", len(rows),
                     self.batcher.pending)
        return len(rows)

    def _track(self, sock: Any, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(sock)

    def stats(self) -> dict[str, Any]:
        """The counters, plus emitted/pending from the batcher."""
        c = self.counters
        with c.lock:
            out = {"received": c.received, "accepted": c.accepted, "rejected": c.rejected, "objects": c.objects,
                   "ignored": c.ignored}
        if self.store is not None:
            out.update(stored=self.store.counts(), resent=self.resent)
        out.update(emitted=self.batcher.emitted, emit_failures=self.batcher.emit_failures,
                   duplicates=self.batcher.duplicates,
                   pending=self.batcher.pending, pending_roots=self.batcher.pending_roots(),
                   keys_held=self.batcher.keys_held(), peak_keys_held=self.batcher.peak_keys_held,
                   key_sample=self.cfg.key_sample)
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
        if self.store is not None:
            self.store.close()

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
            server = holder["server"]
            with server.ingest_lock:  # on disk before the 200: a bridge killed after answering loses nothing
                seq = server.store.add((cfg.root_of(ev.key) or "", ev) for ev in counted) \
                    if server.store is not None else 0
                batcher.add(counted, seq=seq, emit=False)
            counters.bump(accepted=1, objects=len(counted), ignored=len(events) - len(counted))
            self._reply(200, {"accepted": len(counted), "ignored": len(events) - len(counted)})
            batcher.emit_ready()  # after replying: a marker's emission must not delay the gateway

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.client_address[0], format % args)

    return Handler


def serve(cfg: BridgeConfig, host: str = "127.0.0.1", port: int = 8787, *, emit: Emitter | None = None,
          clock: Callable[[], float] = time.monotonic, tick_seconds: float | None = None,
          store: EventStore | str | None = None, fingerprint: Fingerprint | None = None,
          confirm: Confirm | None = None, confirm_after: float = 60.0, max_resends: int = 5) -> BridgeServer:
    """Start the bridge in background threads and return its handle (``port=0``: any free port).

    ``emit``: where events go (default: :func:`emit_prefect_event` to ``cfg.prefect_api_url``).
    ``tick_seconds``: how often quiet roots are checked (default: quiet_seconds/5, between 0.05 and 1 s).
    ``store``: the durable queue (an :class:`EventStore` or its SQLite path); its rows are replayed at start.
    ``fingerprint``: a root's content fingerprint for event ids (see :mod:`scene.ops.batcher`).
    ``confirm``: which change ids have a retrain run; with a store, unconfirmed deliveries are re-sent.
    """
    if emit is None:
        if not cfg.prefect_api_url:
            raise ValueError("serve(): no Prefect API URL in the config and no emit function; set PREFECT_API_URL")
        api = cfg.prefect_api_url

        def emit(event: dict) -> Any:
            return emit_prefect_event(api, event, api_key=cfg.prefect_api_key, auth_string=cfg.prefect_auth_string)

    if isinstance(store, str):
        store = EventStore(store)
    db = store

    def on_sent(event: dict, bucket: str, root: str, seq: int) -> None:
        if db is not None:
            db.sent(event, bucket, root, seq)
            if confirm is None:  # nobody checks for runs: delivered is done
                db.confirmed(event["id"])

    batcher = Batcher(cfg, emit, clock=clock, fingerprint=fingerprint, on_sent=on_sent)
    counters = Counters()
    every = tick_seconds if tick_seconds is not None else min(1.0, max(0.05, cfg.quiet_seconds / 5))
    holder: dict[str, BridgeServer] = {}
    handler = _make_handler(cfg, batcher, counters, holder)
    try:
        httpd = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as err:
        raise OSError(f"event bridge: cannot listen on {host}:{port}: {err.strerror or err}") from err
    httpd.daemon_threads = True
    server = holder["server"] = BridgeServer(cfg, httpd, batcher, counters, every, store=store, confirm=confirm,
                                             confirm_after=confirm_after, max_resends=max_resends, emit=emit)
    server.replay()
    server._start()
    log.info("event bridge listening on %s/notify: bucket %s, prefix %r, quiet %.1fs, marker %r, events to %s",
             server.url, cfg.bucket, cfg.prefix, cfg.quiet_seconds, cfg.ready_marker,
             cfg.prefect_api_url or "a custom emitter")
    return server
