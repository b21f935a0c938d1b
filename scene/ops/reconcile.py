"""Reconcile: announce every dataset holding images that no *gated* model was trained on, in case an event was lost.

Events are lost when they are emitted while the retrain deployment does not exist, during ``prefect deploy``
(which recreates its trigger), or when the bridge dies with a batch pending. The reconcile lists the image
keys of each dataset root under the data prefix and compares them with the ``manifest.csv`` of the newest
*gated* model version trained on that root (one with a ``decision.json``, promoted or not, so a challenger that
lost the gate is not retrained again and again). A version that was registered but never gated (its run died
between registering and the gate) does not count, so that data is announced and a retrain gates it. A root with
keys outside that manifest, or with no gated version at all, gets a ``scene.data.arrived`` event (reason
``reconcile``) unless a retrain or train-all run for it is already waiting or running (that run trains on it).
Its id is the change id of the root's listing (:func:`scene.ops.polling.root_change_id`): the same id the bridge
and the polling sensor give that state, so a retrain for it that exists already ends the new one as a duplicate.

Back-off: every announcement is recorded (``{dataset: {change, attempts, outcome, reason, next_at}}``, kept
as JSON in the artifact bucket). When the runs of the change last announced for a root ended Failed (e.g. the data
fails validation) or Completed without a gated version, and the root still lists that same state, the next
announcement waits ``BACKOFF_BASE * 2**(attempts-1)`` (capped at ``BACKOFF_MAX``); the report names the reason
(the run's state message). Crashed and Cancelled runs, and changes no run was created for, are retried at once.

It runs at bridge start and every ``every`` seconds after (hourly by default) in ``scene events serve``, and
as ``scene events reconcile`` after ``prefect deploy`` (``make deploy``). Limitation: an image replaced in
place under the same key is not seen (the listing compares keys, not content).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from scene.ops.notifications import BridgeConfig
from scene.ops.polling import root_change_id, snapshot
from scene.ops.prefect_events import dataset_event, flow_runs

log = logging.getLogger("scene.events")
ACTIVE = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED"]
DAY = 86400.0
HOUR = 3600.0
BACKOFF_BASE = HOUR  # the first wait after a failed attempt on the same data
BACKOFF_MAX = 7 * DAY
HISTORY_KEY = "sensors/reconcile-attempts.json"  # in the artifact bucket
RunOutcomes = Callable[[list[str]], dict[str, tuple[str, str, str]]]  # change -> (state type, message, run id)


def trained_keys(s3: Any, artifact_bucket: str) -> dict[str, set[str] | None]:
    """``{dataset URI: keys in the manifest of its newest gated version}`` (None: that manifest is gone).

    Gated: the version has a ``decision.json`` (a version registered by a run that died before the gate is not
    trained data: it was never compared with the champion)."""
    import pandas as pd

    from scene import registry
    from scene.data import storage

    by_dataset: dict[str, list[str]] = {}
    for entry in registry.list_versions(s3, artifact_bucket):  # oldest first
        if entry.get("dataset"):
            by_dataset.setdefault(entry["dataset"], []).append(entry["uri"])
    newest: dict[str, str] = {}
    for dataset, uris in by_dataset.items():
        for uri in reversed(uris):  # newest first: one HEAD per version until a gated one
            if storage.exists(uri.rstrip("/") + "/decision.json", s3):
                newest[dataset] = uri
                break
    out: dict[str, set[str] | None] = {}
    for dataset, uri in newest.items():
        manifest = uri.rstrip("/") + "/manifest.csv"
        if not storage.exists(manifest, s3):
            out[dataset] = None
            continue
        keys = pd.read_csv(io.BytesIO(storage.read_bytes(manifest, s3)), usecols=["key"])["key"]
        out[dataset] = {str(k) for k in keys}
    return out


def untrained(s3: Any, cfg: BridgeConfig, artifact_bucket: str, listing: dict[str, str] | None = None
              ) -> dict[str, list[str]]:
    """``{dataset root: [image keys no gated version of it was trained on]}`` (roots with none left out)."""
    listing = snapshot(s3, cfg) if listing is None else listing
    trained = trained_keys(s3, artifact_bucket)
    roots: dict[str, list[str]] = {}
    for key in sorted(listing):
        root = cfg.root_of(key)
        if root is not None:
            roots.setdefault(root, []).append(key)
    out: dict[str, list[str]] = {}
    for root, keys in roots.items():
        uri = f"s3://{cfg.bucket}/{root}"
        known: set[str] = set()
        seen = False
        for dataset, manifest_keys in trained.items():
            if dataset.startswith(uri):
                seen = True
                known |= manifest_keys or set()
        new = [k for k in keys if f"s3://{cfg.bucket}/{k}" not in known and k not in known]
        if new or not seen:
            out[root] = new or keys
    return out


def active_trainings(api_url: str, flows: tuple[str, ...] = ("retrain", "train-all"), **auth: Any) -> set[str]:
    """The ``data`` of every retrain or train-all flow run that is waiting or running: its run trains on the data
    anyway (``make run`` submits train-all for the data it just uploaded, then reconciles)."""
    runs = flow_runs(api_url, list(flows), states=ACTIVE, **auth)
    return {str((r.get("parameters") or {}).get("data")) for r in runs}


def run_outcomes(api_url: str, **auth: Any) -> RunOutcomes:
    """``outcomes(change ids)``: (state type, message, run id) of the newest retrain run of each change."""
    def outcomes(changes: list[str]) -> dict[str, tuple[str, str, str]]:
        wanted = set(changes)
        if not wanted:
            return {}
        runs = flow_runs(api_url, ["retrain"], **auth)
        out: dict[str, tuple[str, str, str]] = {}
        for r in runs:  # newest first: the first run of a change wins
            change = str((r.get("parameters") or {}).get("change_id"))
            if change in wanted and change not in out:
                state = r.get("state") or {}
                out[change] = (str(state.get("type") or r.get("state_type") or ""), str(state.get("message") or ""),
                               str(r.get("id")))
        return out
    return outcomes


def backoff_seconds(attempts: int) -> float:
    """The wait before announcing the same data again after ``attempts`` failed attempts."""
    return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1))


def _judge(prev: dict[str, Any] | None, change: str, outcome: tuple[str, str, str] | None, now: float
           ) -> tuple[dict[str, Any], str | None]:
    """The new history record of a root about to be announced as ``change``, and why to wait (None: announce)."""
    if prev is None or prev.get("change") != change:  # new data (or never announced): announce now
        return {"change": change, "attempts": 0, "outcome": "new", "reason": "", "next_at": now}, None
    rec = dict(prev)
    if outcome is not None and rec.get("outcome_run") != outcome[2]:  # each run's outcome counts once
        state, message, run_id = outcome
        if state in ("FAILED", "COMPLETED"):  # non-transient: the data itself, or nothing gated from it
            rec["attempts"] = int(rec.get("attempts", 0)) + 1
            rec["outcome"] = state.lower()
            rec["reason"] = message or ("the run completed without a gated model" if state == "COMPLETED" else
                                        "the run failed")
            rec["next_at"] = float(rec.get("announced_at", now)) + backoff_seconds(rec["attempts"])
        else:  # crashed, cancelled: transient, retry now
            rec["outcome"], rec["reason"] = state.lower(), message
        rec["outcome_run"] = run_id
    if now < float(rec.get("next_at", 0)):
        return rec, (f"backing off: {rec['attempts']} attempts on this data ended {rec['outcome']} "
                     f"({rec['reason'][:300]}); next try in {rec['next_at'] - now:.0f} s")
    return rec, None


def load_history(s3: Any, artifact_bucket: str) -> dict[str, dict[str, Any]]:
    """The reconcile's attempt records (``{}`` when none or unreadable: a lost history only retries sooner)."""
    from scene.data import storage

    uri = f"s3://{artifact_bucket}/{HISTORY_KEY}"
    try:
        if not storage.exists(uri, s3):
            return {}
        doc = json.loads(storage.read_bytes(uri, s3))
        return doc if isinstance(doc, dict) else {}
    except Exception as err:  # a damaged file must not stop the reconcile
        log.warning("reconcile: ignoring unreadable %s: %s", uri, err)
        return {}


def save_history(s3: Any, artifact_bucket: str, history: dict[str, dict[str, Any]]) -> None:
    """Write the attempt records."""
    from scene.data import storage

    storage.write_bytes(f"s3://{artifact_bucket}/{HISTORY_KEY}", json.dumps(history, indent=1, sort_keys=True
                                                                           ).encode(), s3)


def reconcile(s3: Any, cfg: BridgeConfig, artifact_bucket: str, emit: Callable[[dict], Any],
              active: set[str] | None = None, outcomes: RunOutcomes | None = None,
              now: float | None = None) -> dict[str, Any]:
    """Emit ``scene.data.arrived`` for each root with ungated images and no active training; what was done.

    ``active``: data URIs with a retrain or train-all waiting or running (:func:`active_trainings`); skipped.
    ``outcomes``: the run states of earlier announcements (:func:`run_outcomes`); with it, data whose runs
    failed is backed off (``backoff``: ``{uri: reason}``) and the attempt history is kept in the artifact bucket.
    ``emit`` raises when an event is not delivered; the error is collected and the other roots still go.
    """
    now = time.time() if now is None else now
    done: dict[str, Any] = {"announced": [], "skipped": [], "backoff": {}, "failed": {}}
    listing = snapshot(s3, cfg)
    todo = untrained(s3, cfg, artifact_bucket, listing)
    history = load_history(s3, artifact_bucket) if outcomes is not None else {}
    changes = {root: root_change_id(cfg, root, listing) for root in todo}
    known = outcomes([h["change"] for h in history.values() if h.get("change")]) if outcomes and history else {}
    for root, keys in todo.items():
        uri = f"s3://{cfg.bucket}/{root}"
        if active and uri in active:
            done["skipped"].append(uri)
            continue
        rec, wait = _judge(history.get(uri), changes[root], known.get(changes[root]), now)
        history[uri] = rec
        if wait is not None:
            done["backoff"][uri] = wait
            log.warning("reconcile: not announcing %s: %s", uri, wait)
            continue
        event = dataset_event(cfg, cfg.bucket, root, keys[: cfg.key_sample], "reconcile", count=len(keys),
                              event_id=changes[root])
        try:
            emit(event)
        except Exception as err:
            done["failed"][uri] = f"{type(err).__name__}: {err}"
            log.warning("reconcile: could not announce %s (%d untrained images): %s", uri, len(keys), err)
            continue
        rec["announced_at"] = now
        done["announced"].append(uri)
        log.info("reconcile: announced %s: %d images no gated model was trained on", uri, len(keys))
    mine = f"s3://{cfg.bucket}/{cfg.prefix}"  # the history is shared with reconciles of other buckets/prefixes
    for uri in [u for u in history if u.startswith(mine) and u not in {f"s3://{cfg.bucket}/{r}" for r in todo}]:
        del history[uri]  # trained now: forget its attempts
    if outcomes is not None:
        save_history(s3, artifact_bucket, history)
    return done
