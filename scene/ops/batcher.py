"""Debouncing: many object events under a dataset root become one ``scene.data.arrived`` event.

The :class:`Batcher` collects the image objects of each root and emits one event when no new object arrived
for ``quiet_seconds`` (or ``max_wait_seconds`` after the first one, so a slow trickle still fires), or at once
when the ``_READY`` marker lands anywhere under the root (a marker always emits, even with no new images
pending). Memory is bounded: per pending root it keeps at most ``key_sample`` keys and a count, never every
key, so a storm of uploads costs a few kilobytes per root.

Events that cannot reach Prefect are kept and retried (2 s .. 60 s apart) with the SAME event id, so a POST
whose reply was lost and is then sent again is dropped as a duplicate by the server: one burst, one run.
Objects that arrive while a batch waits for its retry are merged into it, and the merged batch gets a new id
(it announces objects the first attempt did not).

Pending batches live in memory: if the bridge dies with a batch pending, that batch is lost; the reconcile
(:mod:`scene.ops.reconcile`, run at bridge start) announces the dataset again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from scene.ops.notifications import BridgeConfig, ObjectEvent
from scene.ops.prefect_events import dataset_event

log = logging.getLogger("scene.events")

Emitter = Callable[[dict], Any]


@dataclass
class _Pending:
    bucket: str
    root: str
    first: float
    last: float
    sample: int  # at most this many keys are kept
    keys: dict[str, None] = field(default_factory=dict)  # ordered set: a sample of the new image keys
    count: int = 0  # new image objects (distinct while they fit in the sample)
    ready: bool = False  # a marker landed: emit now
    not_before: float = 0.0  # retry delay after a failed emission
    failures: int = 0
    event_id: str | None = None  # fixed at the first attempt, reused by every retry

    def add_key(self, key: str) -> None:
        if key in self.keys:
            return
        self.count += 1
        self.event_id = None  # a batch that grew announces more than its earlier attempt: a new event
        if len(self.keys) < self.sample:
            self.keys[key] = None

    def merge(self, newer: _Pending) -> None:
        """Take in the objects of a batch that formed while this one waited for its retry."""
        for key in newer.keys:
            if len(self.keys) >= self.sample:
                break
            self.keys[key] = None
        self.count += newer.count
        self.last = max(self.last, newer.last)
        self.ready = self.ready or newer.ready
        if newer.count:
            self.event_id = None  # it now announces more than the first attempt did


class Batcher:
    """Debounces matching object events into one emission per dataset root (thread-safe).

    ``add()`` takes matching events (see :func:`scene.ops.notifications.matching`); ``tick()`` emits the roots
    that have been quiet for ``quiet_seconds`` (call it periodically; the bridge server does). A ``_READY`` marker
    emits from ``add()`` at once. ``emit(event)`` gets the event dict; if it raises, the batch is kept and retried
    with a growing delay and the same event id. ``clock`` is injectable for tests.
    """

    def __init__(self, cfg: BridgeConfig, emit: Emitter, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Pending] = {}
        self.emitted = 0
        self.emit_failures = 0
        self.peak_keys_held = 0  # the most keys held at once, over all pending roots (the memory bound)

    @property
    def pending(self) -> int:
        """Dataset roots waiting to be emitted."""
        with self._lock:
            return len(self._pending)

    def pending_roots(self) -> list[str]:
        """``bucket/root`` of each waiting dataset root."""
        with self._lock:
            return [f"{b}/{r}" for b, r in self._pending]

    def keys_held(self) -> int:
        """Keys held in memory now, over all pending roots (at most ``key_sample`` per root)."""
        with self._lock:
            return sum(len(p.keys) for p in self._pending.values())

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
                    p = self._pending[(ev.bucket, root)] = _Pending(ev.bucket, root, first=now, last=now,
                                                                    sample=self.cfg.key_sample)
                p.last = now
                if self.cfg.is_marker(ev.key):
                    p.ready = True
                else:
                    p.add_key(ev.key)
                n += 1
            held = sum(len(p.keys) for p in self._pending.values())
            self.peak_keys_held = max(self.peak_keys_held, held)
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
            p.event_id = p.event_id or str(uuid.uuid4())
            event = dataset_event(self.cfg, p.bucket, p.root, p.keys, reason, count=p.count, event_id=p.event_id)
            try:
                self._emit(event)
            except Exception as err:  # keep the batch (and its id); the next tick retries
                self._requeue(p, now)
                self.emit_failures += 1
                log.warning("could not emit %s %s for s3://%s/%s (%d new objects), retrying in %.0fs: %s",
                            self.cfg.event_name, p.event_id, p.bucket, p.root, p.count, p.not_before - now, err)
                continue
            done += 1
            self.emitted += 1
            log.info("emitted %s %s for s3://%s/%s: %d new objects (%s)", self.cfg.event_name, event["id"],
                     p.bucket, p.root, p.count, reason)
        return done

    def _requeue(self, p: _Pending, now: float) -> None:
        p.failures += 1
        p.ready = True
        p.not_before = now + min(60.0, 2.0 * 2 ** (p.failures - 1))
        with self._lock:
            newer = self._pending.get((p.bucket, p.root))
            if newer is not None:  # objects arrived meanwhile: merge them into the retried batch
                p.merge(newer)
            self._pending[(p.bucket, p.root)] = p
