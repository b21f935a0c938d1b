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
or that found no trigger (``prefect deploy``) still starts its run.

HTTP layer: a Starlette app served by uvicorn (h11) on an event loop in a background thread. Each request has
one total deadline (``request_deadline``, 10 s) for its headers and body: a client still sending headers then is
answered 408 and disconnected by the protocol (:class:`_DeadlineProtocol`), one still sending its body by the
ASGI middleware (:class:`_RequestDeadline`, ``anyio.fail_after`` around every ``receive``). Connections are
bounded (``max_connections``: uvicorn's ``limit_concurrency``, 503 beyond it) and so is the listen backlog; the
body cap is checked on ``Content-Length`` before reading and counted while reading a chunked body. A refusal sent
while the client is still sending its body first reads and discards up to ``DRAIN_BYTES`` of it (under the same
deadline): closing on unread bytes makes the kernel reset the connection, and the client sees a broken pipe instead
of the 401/413 (Go's net/http drains 256 KiB for the same reason); a longer remainder is cut off. The blocking
work of a request (SQLite, the batcher, the counters) runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import h11
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from scene.ops.batcher import Batcher, Emitter, Fingerprint
from scene.ops.event_store import EventStore
from scene.ops.notifications import BadNotification, BridgeConfig, ObjectEvent, parse_notification
from scene.ops.prefect_events import emit_prefect_event, resend_of

Confirm = Callable[[list[str]], set[str]]  # change ids -> those a retrain run exists for

REQUEST_DEADLINE = 10.0  # seconds a client has to send one request, headers and body together (then 408)
MAX_CONNECTIONS = 64  # open connections beyond which a request is answered 503 (uvicorn limit_concurrency)
BACKLOG = 128  # connections the kernel queues before accept
KEEP_ALIVE = 5  # seconds an idle keep-alive connection stays open between requests
GRACE = 5  # seconds stop() lets requests in flight finish before cancelling them
DRAIN_BYTES = 256 << 10  # unread body a refusal reads and discards first, so the client gets the answer, not a reset
_DEADLINE = "scene.deadline"  # scope key: the event-loop time the request must be received by

log = logging.getLogger("scene.events")


@dataclass
class Counters:
    """What the bridge has seen (``GET /health``)."""

    received: int = 0  # notification POSTs
    accepted: int = 0  # POSTs answered 200
    rejected: int = 0  # POSTs refused (401, 400, 408, 411, 413, 404)
    objects: int = 0  # object events that counted
    ignored: int = 0  # object events filtered out
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol plus one clock per request: it starts at the connection (or the request's first
    byte on a keep-alive connection) and the request must be received within ``deadline_seconds``.

    While headers are incomplete the protocol answers 408 itself and closes; once they are in, the app gets the
    deadline in ``scope["scene.deadline"]`` and :class:`_RequestDeadline` enforces it on the body. A body the app
    never read (answered without reading) is cut off at the same deadline.
    """

    deadline_seconds: float = REQUEST_DEADLINE

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._clock: asyncio.TimerHandle | None = None
        self._t0: float | None = None
        self._bytes = False  # bytes of the current request received (a silent idle connection just closes)
        super().connection_made(transport)
        self._start_clock()

    def _start_clock(self) -> None:
        self._stop_clock()
        self._t0 = self.loop.time()
        self._clock = self.loop.call_at(self._t0 + self.deadline_seconds, self._expired)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
        self._clock, self._t0, self._bytes = None, None, False

    def data_received(self, data: bytes) -> None:
        if self._t0 is None:  # first byte of the next request on a keep-alive connection
            self._start_clock()
        self._bytes = True
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not None and self.cycle is not before:  # headers in: the app enforces the rest
            if self._t0 is None:  # a pipelined request started by on_response_complete
                self._start_clock()
            assert self._t0 is not None
            # the task running the app has not started yet (created, not awaited), so it sees this key
            self.cycle.scope[_DEADLINE] = self._t0 + self.deadline_seconds  # type: ignore[literal-required]

    def on_response_complete(self) -> None:
        self._stop_clock()
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and self._t0 is None and not self.transport.is_closing():
            self._start_clock()  # answered without reading the body: the rest of it gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _expired(self) -> None:
        self._clock = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # the app has the request: _RequestDeadline answers 408 when its body is late
        if self._bytes and self.conn.their_state is h11.IDLE:
            log.warning("cut off %s: request headers not complete after %gs (408)",
                        self.client[0] if self.client else "?", self.deadline_seconds)
            body = json.dumps({"error": f"client sent its request too slowly (over {self.deadline_seconds:g}s)"})
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body.encode()))
        self.transport.close()


def _protocol(deadline_seconds: float) -> type[_DeadlineProtocol]:
    """The protocol class for one server (uvicorn instantiates it per connection)."""
    return type("DeadlineProtocol", (_DeadlineProtocol,), {"deadline_seconds": deadline_seconds})


class _RequestDeadline:
    """ASGI middleware: every ``receive`` of a request runs under ``anyio.fail_after`` until its deadline
    (``scope["scene.deadline"]`` from the protocol, else ``seconds`` from now); a body not in by then is answered
    408 with ``Connection: close`` (``on_timeout(scope)`` counts it)."""

    def __init__(self, app: ASGIApp, seconds: float, on_timeout: Callable[[Scope], None]) -> None:
        self.app = app
        self.seconds = seconds
        self.on_timeout = on_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = scope.get(_DEADLINE) or anyio.current_time() + self.seconds
        started = False

        async def timed_receive() -> Message:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                return await receive()

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except TimeoutError:
            if started:
                raise
            self.on_timeout(scope)
            await _json(408, {"error": f"client sent its request too slowly (over {self.seconds:g}s)"},
                        close=True)(scope, receive, send)


class _BodyCut(Exception):
    """The client went before its body ended, after ``size`` bytes."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


async def _read_body(request: Request, cap: int) -> tuple[bytes, bool]:
    """The body, or its first ``cap``-and-more bytes: ``(bytes, whether the body ended)``. Raises
    :class:`_BodyCut` when the client goes first; a body late for the request's deadline raises TimeoutError
    (the client gets its 408)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise _BodyCut(size)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > cap:
            return b"".join(chunks), False


def _content_length(text: str | None) -> int | None:
    """A ``Content-Length`` header's value: -1 when absent, None when not a non-negative integer."""
    if text is None:
        return -1
    try:
        length = int(text)
    except ValueError:
        return None
    return length if length >= 0 else None


def _json(status: int, body: dict[str, Any], close: bool = False, background: BackgroundTask | None = None
          ) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json",
                    headers={"Connection": "close"} if close else None, background=background)


_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]  # all routed to dispatch (501 for most)


class _App:
    """The bridge's routes: ``POST /notify`` (or ``/``), ``GET /health`` (``/healthz``), ``HEAD`` anything."""

    def __init__(self, server: BridgeServer, deadline_seconds: float) -> None:
        self.server = server
        self.cfg = server.cfg
        self.counters = server.counters
        self.expected = f"Bearer {server.cfg.token}".encode()
        self.starlette = Starlette(
            routes=[Route("/{path:path}", self.dispatch, methods=_METHODS)],
            middleware=[Middleware(_RequestDeadline, seconds=deadline_seconds, on_timeout=self._timed_out)])

    def _authorized(self, request: Request) -> bool:
        given = (request.headers.get("authorization") or "").strip().encode("latin-1", "replace")
        return hmac.compare_digest(given, self.expected)

    def _reject(self, request: Request, status: int, why: str, close: bool = False) -> Response:
        self.counters.bump(rejected=1)
        log.warning("rejected notification from %s: %s (%d)", _client(request.scope), why, status)
        return _json(status, {"error": why}, close=close)

    async def _refuse(self, request: Request, status: int, why: str, drain: bool = True) -> Response:
        """Reject and close; with ``drain``, first read and discard up to ``DRAIN_BYTES`` of the body still
        coming (none from a client waiting for ``100 Continue``)."""
        if drain and "100-continue" not in request.headers.get("expect", "").lower():
            with contextlib.suppress(_BodyCut):
                await _read_body(request, DRAIN_BYTES)
        return self._reject(request, status, why, close=True)

    def _timed_out(self, scope: Scope) -> None:
        if scope.get("method") == "POST":
            self.counters.bump(rejected=1)
        log.warning("rejected notification from %s: client sent its body too slowly (408)", _client(scope))

    async def dispatch(self, request: Request) -> Response:
        method, path = request.method, request.scope["path"]
        if method == "POST":
            return await self._post(request, path)
        if method == "GET":
            if path in ("/health", "/healthz"):  # the counters only for the token holder
                stats = await anyio.to_thread.run_sync(self.server.stats) if self._authorized(request) else {}
                return _json(200, {"status": "ok", **stats})
            return _json(404, {"error": f"no such page {path!r}; POST /notify, GET /health"})
        if method == "HEAD":  # reachability probes
            return _json(200, {})
        return _json(501, {"error": f"unsupported method {method!r}; POST /notify, GET /health"}, close=True)

    async def _post(self, request: Request, path: str) -> Response:
        try:
            return await self._notify(request, path)
        except TimeoutError:
            raise  # _RequestDeadline answers 408
        except Exception as err:  # the server must survive anything
            log.exception("notification from %s failed", _client(request.scope))
            return _json(500, {"error": f"internal error: {type(err).__name__}"}, close=True)

    async def _notify(self, request: Request, path: str) -> Response:
        cfg = self.cfg
        self.counters.bump(received=1)
        length_text = request.headers.get("content-length")
        length = _content_length(length_text)  # -1: none announced; None: not a non-negative integer
        drain = length is None or length <= DRAIN_BYTES  # a body announced larger is cut off unread
        if path not in ("/notify", "/"):
            return await self._refuse(request, 404, f"no such endpoint {path!r}; notifications go to POST /notify",
                                      drain)
        if not self._authorized(request):
            return await self._refuse(request, 401, "missing or wrong bearer token" if request.headers.get(
                "authorization", "").strip() else "no Authorization header", drain)
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        if length_text is None and not chunked:
            return self._reject(request, 411, "no Content-Length header", close=True)
        if length is None:
            return self._reject(request, 400, f"bad Content-Length {length_text[:40]!r}", close=True)
        if length > cfg.max_body_bytes:
            return await self._refuse(request, 413, f"body of {length} bytes is over the {cfg.max_body_bytes}-byte "
                                                    "limit", drain)
        try:  # under the request's deadline (_RequestDeadline)
            body, ended = await _read_body(request, cfg.max_body_bytes)
        except _BodyCut as cut:
            expected = f" of {length}" if length >= 0 else ""
            return self._reject(request, 400, f"body ended after {cut.size}{expected} bytes", close=True)
        if len(body) > cfg.max_body_bytes:
            return await self._refuse(request, 413, f"chunked body over the {cfg.max_body_bytes}-byte limit",
                                      drain=not ended)
        status, answer = await anyio.to_thread.run_sync(self._ingest, body)
        if status != 200:
            return self._reject(request, status, answer["error"])
        # emit after replying: a marker's emission must not delay the gateway
        return _json(200, answer, background=BackgroundTask(self.server.batcher.emit_ready))

    def _ingest(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Parse, filter, persist and batch one notification (a worker thread: SQLite and locks block)."""
        cfg, server = self.cfg, self.server
        try:
            events = parse_notification(body)
        except BadNotification as err:
            return 400, {"error": f"malformed notification: {err}"}
        counted: list[ObjectEvent] = []
        for ev in events:
            why = cfg.reason_to_ignore(ev)
            if why is None:
                counted.append(ev)
                log.info("object s3://%s/%s (%s, %d bytes) counts for %s", ev.bucket, ev.key, ev.event_name,
                         ev.size, cfg.root_of(ev.key))
            else:  # repr: a hostile key must not forge log lines
                log.info("ignored %r in bucket %r: %s", ev.key, ev.bucket, why)
        with server.ingest_lock:  # on disk before the 200: a bridge killed after answering loses nothing
            seq = server.store.add((cfg.root_of(ev.key) or "", ev) for ev in counted) \
                if server.store is not None else 0
            server.batcher.add(counted, seq=seq, emit=False)
        self.counters.bump(accepted=1, objects=len(counted), ignored=len(events) - len(counted))
        return 200, {"accepted": len(counted), "ignored": len(events) - len(counted)}


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


class BridgeServer:
    """A running bridge: ``url`` (``http://HOST:PORT``), ``notify_url``, ``stats()``, ``stop()``, ``wait()``."""

    def __init__(self, cfg: BridgeConfig, sock: socket.socket, batcher: Batcher, counters: Counters,
                 tick_seconds: float, store: EventStore | None = None, confirm: Confirm | None = None,
                 confirm_after: float = 60.0, max_resends: int = 5, emit: Emitter | None = None,
                 request_deadline: float = REQUEST_DEADLINE, max_connections: int = MAX_CONNECTIONS,
                 backlog: int = BACKLOG) -> None:
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
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.host, self.port = str(host), int(port)
        self.url = f"http://{self.host}:{self.port}"
        self.notify_url = f"{self.url}/notify"
        self.request_deadline = request_deadline
        self._stop = threading.Event()
        self._http = uvicorn.Server(uvicorn.Config(
            _App(self, request_deadline).starlette, http=_protocol(request_deadline), loop="asyncio", ws="none",
            lifespan="off", interface="asgi3", log_config=None, log_level=logging.WARNING, access_log=False,
            proxy_headers=False, server_header=False, headers=[("server", "scene-events/2")],
            limit_concurrency=max_connections, backlog=backlog, timeout_keep_alive=KEEP_ALIVE,
            timeout_graceful_shutdown=GRACE))
        self._http_thread = threading.Thread(target=self._http.run, kwargs={"sockets": [sock]}, daemon=True,
                                             name="scene-events-http")
        self._threads = [
            threading.Thread(target=self._ticker, args=(tick_seconds,), daemon=True, name="scene-events-tick"),
        ]
        if store is not None and confirm is not None:
            self._threads.append(threading.Thread(target=self._confirmer, args=(max(1.0, confirm_after / 4),),
                                                  daemon=True, name="scene-events-confirm"))

    def _start(self) -> None:
        self._http_thread.start()
        deadline = time.monotonic() + 30
        while not self._http.started:  # listening (the socket is bound already; this is the event loop's start)
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                self._sock.close()
                raise RuntimeError(f"event bridge: the HTTP server on {self.url} did not start")
            time.sleep(0.01)
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
        # uvicorn closes the listener and idle keep-alive connections, lets requests in flight finish (GRACE
        # seconds, then cancels them); a request still arriving is cut at its deadline
        self._http.should_exit = True
        self._http_thread.join(timeout=GRACE + 5)
        if self._http_thread.is_alive():
            self._http.force_exit = True
            self._http_thread.join(timeout=5)
        self._sock.close()
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


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket. ``IPPROTO_TCP`` explicitly: asyncio sets TCP_NODELAY only on sockets whose proto
    says TCP, and without it every keep-alive answer (headers, then body: two writes) waits for the client's
    delayed ACK, ~40 ms per POST."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted bridge gets its port back
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def serve(cfg: BridgeConfig, host: str = "127.0.0.1", port: int = 8787, *, emit: Emitter | None = None,
          clock: Callable[[], float] = time.monotonic, tick_seconds: float | None = None,
          store: EventStore | str | None = None, fingerprint: Fingerprint | None = None,
          confirm: Confirm | None = None, confirm_after: float = 60.0, max_resends: int = 5,
          request_deadline: float = REQUEST_DEADLINE, max_connections: int = MAX_CONNECTIONS,
          backlog: int = BACKLOG) -> BridgeServer:
    """Start the bridge in background threads and return its handle (``port=0``: any free port).

    ``emit``: where events go (default: :func:`emit_prefect_event` to ``cfg.prefect_api_url``).
    ``tick_seconds``: how often quiet roots are checked (default: quiet_seconds/5, between 0.05 and 1 s).
    ``store``: the durable queue (an :class:`EventStore` or its SQLite path); its rows are replayed at start.
    ``fingerprint``: a root's content fingerprint for event ids (see :mod:`scene.ops.batcher`).
    ``confirm``: which change ids have a retrain run; with a store, unconfirmed deliveries are re-sent.
    ``request_deadline``: seconds a client has to send one request (headers and body), then 408.
    ``max_connections``: open connections beyond which requests get 503; ``backlog``: the listen queue.
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
    if request_deadline <= 0 or max_connections < 1 or backlog < 1:
        raise ValueError(f"serve(): request_deadline {request_deadline}, max_connections {max_connections} and "
                         f"backlog {backlog} must be positive")
    try:  # bound here, so a taken port fails now and port=0 is known before the loop starts
        sock = _listen(host, port, backlog)
    except OSError as err:
        raise OSError(f"event bridge: cannot listen on {host}:{port}: {err.strerror or err}") from err
    server = BridgeServer(cfg, sock, batcher, counters, every, store=store, confirm=confirm,
                          confirm_after=confirm_after, max_resends=max_resends, emit=emit,
                          request_deadline=request_deadline, max_connections=max_connections, backlog=backlog)
    server.replay()
    server._start()
    log.info("event bridge listening on %s/notify: bucket %s, prefix %r, quiet %.1fs, marker %r, events to %s",
             server.url, cfg.bucket, cfg.prefix, cfg.quiet_seconds, cfg.ready_marker,
             cfg.prefect_api_url or "a custom emitter")
    return server
