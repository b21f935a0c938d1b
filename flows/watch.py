"""Flow: the polling sensor for stores without bucket notifications.

Lists the image objects under ``prefix_uri``, compares key → ETag with the state saved by the previous run
in ``s3://<artifact bucket>/<state_key>``, emits one ``scene.data.arrived`` event (the same event the
bridge in :mod:`scene.events` emits) per dataset root with new or changed images, then saves the new state.
Removed objects are recorded but emit nothing. The first run (no state yet) records the state and emits
for every dataset root present, so a fresh deployment retrains on what is already there. The state is
saved after emitting: a failed save means a repeated event next time, never a lost one.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from scene import events, storage
from tasks.common import s3, settings

STATE_VERSION = 1


def _state_uri(state_key: str) -> str:
    return f"s3://{settings().artifact_bucket}/{state_key.lstrip('/')}"


@task(name="load watch state", retries=2, retry_delay_seconds=5)
def load_state(state_key: str) -> dict[str, str] | None:
    """The ``{key: etag}`` of the previous run, or None when there is none yet."""
    uri = _state_uri(state_key)
    client = s3()
    if not storage.exists(uri, client):
        return None
    try:
        doc = json.loads(storage.read_bytes(uri, client))
        objects = doc["objects"]
        if not isinstance(objects, dict):
            raise TypeError("'objects' is not a mapping")
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(f"{uri}: not a watch state file ({err}); delete it to start over") from err
    return {str(k): str(v) for k, v in objects.items()}


@task(name="list objects", retries=2, retry_delay_seconds=5)
def scan(prefix_uri: str) -> dict[str, str]:
    """``{key: etag}`` of the image objects under the prefix."""
    loc = storage.parse(prefix_uri)
    if not loc.is_s3:
        raise ValueError(f"prefix_uri {prefix_uri!r}: the watch flow polls an S3 prefix (s3://bucket/prefix/)")
    return events.snapshot(s3(), events.polling_config(loc.bucket or "", loc.key))


@task(name="save watch state", retries=2, retry_delay_seconds=5)
def save_state(state_key: str, prefix_uri: str, objects: dict[str, str]) -> str:
    """Write the state; return its URI."""
    uri = _state_uri(state_key)
    doc = {"version": STATE_VERSION, "prefix": prefix_uri, "saved": datetime.now(timezone.utc).isoformat(),
           "objects": objects}
    storage.write_bytes(uri, json.dumps(doc, indent=1, sort_keys=True).encode(), s3())
    return uri


@flow(name="watch", log_prints=True)
def watch(prefix_uri: str = "s3://scene-data/datasets/", state_key: str = "sensors/watch-state.json") -> dict:
    """Emit ``scene.data.arrived`` per dataset root with new or changed images since the last run."""
    log = get_run_logger()
    loc = storage.parse(prefix_uri)
    if not loc.is_s3:
        raise ValueError(f"prefix_uri {prefix_uri!r}: the watch flow polls an S3 prefix (s3://bucket/prefix/)")
    cfg = events.polling_config(loc.bucket or "", loc.key)
    old = load_state(state_key)
    new = scan(prefix_uri)
    first = old is None
    roots = events.changed_roots(cfg, old or {}, new)
    emitted: list[str] = []
    for root, keys in roots.items():
        ev = events.dataset_event(cfg, cfg.bucket, root, keys, reason="first poll" if first else "poll")
        emit_event(event=ev["event"], resource=ev["resource"], payload=ev["payload"])
        emitted.append(ev["payload"]["data"])
        log.info("emitted %s for %s: %d new or changed images", ev["event"], ev["payload"]["data"], len(keys))
    before = old or {}
    summary: dict[str, Any] = {
        "prefix": prefix_uri,
        "objects": len(new),
        "new": sum(1 for k in new if k not in before),
        "changed": sum(1 for k, e in new.items() if k in before and before[k] != e),
        "removed": sum(1 for k in before if k not in new),
        "first_run": first,
        "emitted": emitted,
    }
    if first or new != before:
        summary["state"] = save_state(state_key, prefix_uri, new)
    else:
        summary["state"] = _state_uri(state_key)
    if not emitted:
        log.info("no new or changed images under %s (%d objects)", prefix_uri, len(new))
    return summary
