"""Polling: for stores without bucket notifications (``flows/watch.py``), and the reconcile's listing.

A snapshot is ``{key: etag}`` of the image objects under the data prefix; two snapshots give the dataset roots
with new or changed images. :func:`announce` emits one event per such root and returns the state to save:
a root whose event was not confirmed delivered keeps its old entries, so the next poll announces it again.
Each event's id is :func:`scene.ops.prefect_events.change_id` of the root's listing, the id the bridge and the
reconcile give the same state of that root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scene.ops.notifications import BridgeConfig, ObjectEvent, polling_config
from scene.ops.prefect_events import change_id, content_fingerprint, dataset_event, root_objects

__all__ = ["announce", "changed_roots", "polling_config", "root_change_id", "snapshot"]


def snapshot(s3: Any, cfg: BridgeConfig, under: str | None = None) -> dict[str, str]:
    """``{key: etag}`` of the image objects under ``s3://cfg.bucket/cfg.prefix`` inside dataset folders
    (``under``: only below this key prefix, e.g. one dataset root)."""
    from scene.data.storage import explain

    bucket = cfg.bucket
    out: dict[str, str] = {}
    prefix = under if under is not None else cfg.prefix
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                ev = ObjectEvent(bucket, obj["Key"], int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'),
                                 "ObjectCreated:Put")
                if cfg.reason_to_ignore(ev) is None and not cfg.is_marker(ev.key):
                    out[ev.key] = ev.etag
    except Exception as err:
        raise explain(err, f"s3://{bucket}/{prefix}", getattr(getattr(s3, "meta", None), "endpoint_url", None)) \
            from err
    return out


def root_change_id(cfg: BridgeConfig, root: str, listing: dict[str, str]) -> str:
    """The change id of a root's state in ``listing`` (a :func:`snapshot`, of the root or of the whole prefix)."""
    return change_id(f"s3://{cfg.bucket}/{root}", content_fingerprint(root_objects(listing, root)))


def changed_roots(cfg: BridgeConfig, old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """``{root: [keys new or with a changed ETag]}`` between two snapshots (removed keys do not count)."""
    roots: dict[str, list[str]] = {}
    for key, etag in sorted(new.items()):
        if old.get(key) != etag:
            root = cfg.root_of(key)
            if root is not None:
                roots.setdefault(root, []).append(key)
    return roots


def announce(cfg: BridgeConfig, old: dict[str, str], new: dict[str, str], emit: Callable[[dict], Any],
             reason: str = "poll") -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Emit one event per changed root; ``(state to save, data URIs announced, {root: error} not announced)``.

    ``emit`` must raise unless the event was delivered. The state to save is ``new``, except that the keys
    under a root whose emission failed keep their ``old`` values (new ones are left out): the next poll sees
    them changed again and re-emits, so a failed emission never advances the state.
    """
    announced: list[str] = []
    failed: dict[str, str] = {}
    for root, keys in changed_roots(cfg, old, new).items():
        event = dataset_event(cfg, cfg.bucket, root, keys, reason=reason, event_id=root_change_id(cfg, root, new))
        try:
            emit(event)
        except Exception as err:  # keep going: other roots may still be announced
            failed[root] = f"{type(err).__name__}: {err}"
            continue
        announced.append(event["payload"]["data"])
    state = dict(new)
    for key in new:
        if cfg.root_of(key) in failed:
            if key in old:
                state[key] = old[key]
            else:
                del state[key]
    return state, announced, failed
