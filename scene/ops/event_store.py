"""The bridge's durable queue: accepted objects and delivered-but-unconfirmed events, in one SQLite file.

The bridge writes every counted object of a notification here (committed, ``synchronous=FULL``) *before* it
answers 200, so a bridge killed after answering loses nothing: at start it replays the rows into its batcher.
Rows are dropped once the event that covers them is delivered (:meth:`EventStore.sent`). A delivered event is
kept as *sent* until a retrain run for it exists (:meth:`EventStore.confirmed`); the bridge re-sends it (same
id) when no run appeared, which covers an event the Prefect server accepted and then lost (a restart: its broker
is in memory) or one that arrived while ``prefect deploy`` recreated the trigger.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scene.ops.notifications import ObjectEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket TEXT NOT NULL, root TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, size INTEGER NOT NULL,
    event_name TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS objects_root ON objects (bucket, root, seq);
CREATE TABLE IF NOT EXISTS sent (
    id TEXT PRIMARY KEY, event TEXT NOT NULL, sent_at REAL NOT NULL, attempts INTEGER NOT NULL);
"""


class EventStore:
    """A thread-safe SQLite queue (one connection, one lock); ``path`` ``":memory:"`` for tests."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the bridge answers 200
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database (safe to call twice)."""
        with self._lock:
            self._db.close()

    def add(self, roots: Iterable[tuple[str, ObjectEvent]]) -> int:
        """Persist ``(root, object event)`` pairs in one transaction; the highest row number (0: none)."""
        rows = [(ev.bucket, root, ev.key, ev.etag, ev.size, ev.event_name, time.time()) for root, ev in roots]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO objects (bucket, root, key, etag, size, event_name, received) "
                                     "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                seq = int(self._db.execute("SELECT max(seq) FROM objects").fetchone()[0])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return seq

    def pending(self) -> list[tuple[int, ObjectEvent]]:
        """Every persisted object not yet covered by a delivered event, oldest first (``(seq, event)``)."""
        with self._lock:
            rows = self._db.execute("SELECT seq, bucket, key, etag, size, event_name FROM objects ORDER BY seq"
                                    ).fetchall()
        return [(int(seq), ObjectEvent(bucket, key, int(size), etag, name)) for seq, bucket, key, etag, size, name
                in rows]

    def sent(self, event: dict, bucket: str, root: str, upto: int) -> None:
        """An event was delivered: drop the root's rows up to ``upto`` and keep the event until confirmed."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM objects WHERE bucket = ? AND root = ? AND seq <= ?",
                                 (bucket, root, upto))
                self._db.execute("INSERT INTO sent (id, event, sent_at, attempts) VALUES (?, ?, ?, 1) "
                                 "ON CONFLICT(id) DO UPDATE SET sent_at = excluded.sent_at",
                                 (event["id"], json.dumps(event), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def unconfirmed(self) -> list[tuple[dict, float, int]]:
        """Delivered events with no run seen yet: ``(event, sent at (epoch s), attempts)``, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT event, sent_at, attempts FROM sent ORDER BY sent_at").fetchall()
        return [(json.loads(ev), float(at), int(n)) for ev, at, n in rows]

    def resent(self, event_id: str) -> None:
        """One more delivery of an unconfirmed event."""
        with self._lock:
            self._db.execute("UPDATE sent SET sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                             (time.time(), event_id))

    def confirmed(self, event_id: str) -> None:
        """A run exists for this event (or it is given up): forget it."""
        with self._lock:
            self._db.execute("DELETE FROM sent WHERE id = ?", (event_id,))

    def counts(self) -> dict[str, Any]:
        """Rows waiting: ``{"objects": n, "unconfirmed": m}``."""
        with self._lock:
            objects = self._db.execute("SELECT count(*) FROM objects").fetchone()[0]
            sent = self._db.execute("SELECT count(*) FROM sent").fetchone()[0]
        return {"objects": int(objects), "unconfirmed": int(sent)}
