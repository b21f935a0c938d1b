"""Debouncing: many object events under a dataset root become one ``scene.data.arrived`` event.

The :class:`Batcher` collects the image objects of each root and emits one event when no new object arrived
for ``quiet_seconds`` (or ``max_wait_seconds`` after the first one, so a slow trickle still fires), or at once
when the ``_READY`` marker lands anywhere under the root (a marker always emits, even with no new images
pending). Memory is bounded: per pending root it keeps at most ``key_sample`` keys and a count, never every
key, so a storm of uploads costs a few kilobytes per root.

Event ids are deterministic: :func:`scene.ops.prefect_events.change_id` of the root and a fingerprint of its
content, by default the ``fingerprint(bucket, root)`` callable given (the bridge lists the root: the id the
reconcile and the polling sensor give the same state), else the batch's own ``{key: etag}``. A batch keeps its
id while it does not grow: objects that arrive again (a gateway resend after a lost reply) add nothing -- no
count, no new id -- and an id already delivered is not sent again, so one change is one event.

Events that cannot reach Prefect are kept and retried (2 s .. 60 s apart) with the SAME event id, so a POST
whose reply was lost and is then sent again is dropped as a duplicate by the server: one burst, one run.
Objects that arrive while a batch waits for its retry are merged into it; only objects it did not hold yet make
it a new event (it then announces objects the first attempt did not).

Pending batches live in memory, and the bridge persists every accepted object first
(:mod:`scene.ops.event_store`): ``add(events, seq)`` takes the store's row number, and ``on_sent(event, bucket,
root, seq)`` is called once an event is delivered, so the store can drop the rows it covered. A bridge that dies
with a batch pending replays the rows at start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from scene.ops.notifications import BridgeConfig, ObjectEvent
from scene.ops.prefect_events import change_id, content_fingerprint, dataset_event

log = logging.getLogger("scene.events")

Emitter = Callable[[dict], Any]
Fingerprint = Callable[[str, str], str]  # (bucket, root) -> content fingerprint of that root now
OnSent = Callable[[dict, str, str, int], Any]  # (event, bucket, root, highest store row it covers)
REMEMBERED_IDS = 4096  # delivered event ids kept to drop a resent change (bounded memory)


@dataclass
class _Pending:
    bucket: str
    root: str
    first: float
    last: float
    sample: int  # at most this many keys are kept
    keys: dict[str, str] = field(default_factory=dict)  # a sample of the new image keys -> their ETags
    count: int = 0  # new image objects (distinct while they fit in the sample)
    ready: bool = False  # a marker landed: emit now
    not_before: float = 0.0  # retry delay after a failed emission
    failures: int = 0
    event_id: str | None = None  # fixed at the first attempt, reused by every retry while the batch does not grow
    seq: int = 0  # the highest event-store row in this batch (0: not persisted)

    def add_key(self, key: str, etag: str = "") -> bool:
        """Record one object; whether the batch grew (a key it holds with the same ETag adds nothing)."""
        if key in self.keys:
            if self.keys[key] == etag:
                return False
            self.keys[key] = etag  # the same object overwritten: a new state, not a new object
        else:
            self.count += 1
            if len(self.keys) < self.sample:
                self.keys[key] = etag
        self.event_id = None  # a batch that grew announces more than its earlier attempt: a new event
        return True

    def merge(self, newer: _Pending) -> None:
        """Take in the objects of a batch that formed while this one waited for its retry.

        Keys this batch already holds (a resend) add no count and keep the event id; only new objects (or a
        changed ETag) make it a new event. ``newer``'s objects beyond its key sample cannot be compared and count.
        """
        for key, etag in newer.keys.items():
            self.add_key(key, etag)
        unseen = newer.count - len(newer.keys)  # objects past newer's sample: not comparable
        if unseen > 0:
            self.count += unseen
            self.event_id = None
        self.last = max(self.last, newer.last)
        self.ready = self.ready or newer.ready
        self.seq = max(self.seq, newer.seq)


class Batcher:
    """Debounces matching object events into one emission per dataset root (thread-safe).

    ``add()`` takes matching events (see :func:`scene.ops.notifications.matching`); ``tick()`` emits the roots
    that have been quiet for ``quiet_seconds`` (call it periodically; the bridge server does). A ``_READY`` marker
    emits from ``add()`` at once. ``emit(event)`` gets the event dict; if it raises, the batch is kept and retried
    with a growing delay and the same event id. ``clock`` is injectable for tests. ``fingerprint(bucket, root)``:
    the root's content fingerprint for the event id (default: the batch's keys); if it raises, the emission is
    retried like a failed one. ``on_sent``: called after each delivery (the bridge's store drops the rows).
    """

    def __init__(self, cfg: BridgeConfig, emit: Emitter, clock: Callable[[], float] = time.monotonic, *,
                 fingerprint: Fingerprint | None = None, on_sent: OnSent | None = None) -> None:
        self.cfg = cfg
        self._emit = emit
        self._clock = clock
        self._fingerprint = fingerprint
        self._on_sent = on_sent
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._sending = 0  # batches taken off ``_pending`` and being emitted now (still counted as pending)
        self._delivered: OrderedDict[str, None] = OrderedDict()  # recently delivered ids (a resend is dropped)
        self.emitted = 0
        self.duplicates = 0  # batches whose change was already delivered (not sent again)
        self.emit_failures = 0
        self.peak_keys_held = 0  # the most keys held at once, over all pending roots (the memory bound)

    @property
    def pending(self) -> int:
        """Dataset roots waiting to be emitted, including those being emitted right now (so ``pending == 0``
        means every batch taken so far is counted in ``emitted``, ``duplicates`` or requeued)."""
        with self._lock:
            return len(self._pending) + self._sending

    def pending_roots(self) -> list[str]:
        """``bucket/root`` of each waiting dataset root."""
        with self._lock:
            return [f"{b}/{r}" for b, r in self._pending]

    def keys_held(self) -> int:
        """Keys held in memory now, over all pending roots (at most ``key_sample`` per root)."""
        with self._lock:
            return sum(len(p.keys) for p in self._pending.values())

    def add(self, events: Iterable[ObjectEvent], seq: int = 0, emit: bool = True) -> int:
        """Record matching events; emit at once for roots whose marker landed. Returns events recorded.

        ``seq``: the event store's highest row for these events (the bridge persists them first). ``emit``
        False: only record (the caller calls :meth:`emit_ready` later, e.g. after answering its client)."""
        now = self._clock()
        n = 0
        with self._lock:
            for ev in events:
                root = self.cfg.root_of(ev.key)
                if root is None:
                    continue
                p = self._pending.get((ev.bucket, root))
                if p is None:
                    p = self._pending[(ev.bucket, root)] = _Pending(ev.bucket, root, first=now, last=now,
                                                                    sample=self.cfg.key_sample)
                p.last = now
                p.seq = max(p.seq, seq)
                if self.cfg.is_marker(ev.key):
                    p.ready = True
                else:
                    p.add_key(ev.key, ev.etag)
                n += 1
            held = sum(len(p.keys) for p in self._pending.values())
            self.peak_keys_held = max(self.peak_keys_held, held)
        if emit:
            self._emit_due(now, markers_only=True)
        return n

    def emit_ready(self) -> int:
        """Emit the roots whose marker landed (and whose retry delay passed); returns emitted."""
        return self._emit_due(self._clock(), markers_only=True)

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
            self._sending += len(batches)
        done = 0
        for p in batches:
            try:
                done += self._emit_one(p, now)
            finally:
                with self._lock:
                    self._sending -= 1
        return done

    def _emit_one(self, p: _Pending, now: float) -> int:
        """Emit one batch taken off the pending map; returns 1 when it was sent, else 0 (duplicate or requeued)."""
        reason = "ready marker" if p.ready else (
            "quiet period" if now - p.last >= self.cfg.quiet_seconds else "maximum wait")
        try:
            p.event_id = p.event_id or self._change_id(p)
            event = dataset_event(self.cfg, p.bucket, p.root, p.keys, reason, count=p.count,
                                  event_id=p.event_id)
            with self._lock:
                again = p.event_id in self._delivered
            if again:  # this very change was delivered already (a resend after a lost reply): one event
                self.duplicates += 1
                log.info("not emitting %s %s for s3://%s/%s again: that change was delivered already",
                         self.cfg.event_name, p.event_id, p.bucket, p.root)
                if self._on_sent is not None:
                    self._on_sent(event, p.bucket, p.root, p.seq)
                return 0
            self._emit(event)
        except Exception as err:  # keep the batch (and its id); the next tick retries
            self._requeue(p, now)
            self.emit_failures += 1
            log.warning("could not emit %s %s for s3://%s/%s (%d new objects), retrying in %.0fs: %s",
                        self.cfg.event_name, p.event_id, p.bucket, p.root, p.count, p.not_before - now, err)
            return 0
        self.emitted += 1
        self._remember(p.event_id)
        if self._on_sent is not None:
            try:
                self._on_sent(event, p.bucket, p.root, p.seq)
            except Exception:  # delivered: the store keeps the rows, a replay re-announces (same id)
                log.exception("could not record the delivery of %s", p.event_id)
        log.info("emitted %s %s for s3://%s/%s: %d new objects (%s)", self.cfg.event_name, event["id"],
                 p.bucket, p.root, p.count, reason)
        return 1

    def _change_id(self, p: _Pending) -> str:
        """The deterministic id of this batch's change (see the module docstring)."""
        fp = self._fingerprint(p.bucket, p.root) if self._fingerprint is not None else content_fingerprint(p.keys)
        return change_id(f"s3://{p.bucket}/{p.root}", fp)

    def _remember(self, event_id: str) -> None:
        with self._lock:
            self._delivered[event_id] = None
            self._delivered.move_to_end(event_id)
            while len(self._delivered) > REMEMBERED_IDS:
                self._delivered.popitem(last=False)

    def _requeue(self, p: _Pending, now: float) -> None:
        p.failures += 1
        p.ready = True
        p.not_before = now + min(60.0, 2.0 * 2 ** (p.failures - 1))
        with self._lock:
            newer = self._pending.get((p.bucket, p.root))
            if newer is not None:  # objects arrived meanwhile: merge them into the retried batch
                p.merge(newer)
            self._pending[(p.bucket, p.root)] = p
