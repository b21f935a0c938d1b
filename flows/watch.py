"""Flow: the polling sensor for stores without bucket notifications.

Lists the image objects under ``prefix_uri``, compares key → ETag with the state saved by the previous run
in ``s3://<artifact bucket>/<state_key>``, emits one ``scene.data.arrived`` event (the same event the
bridge in :mod:`scene.ops.bridge` emits) per dataset root with new or changed images, then saves the new state.
Removed objects are recorded but emit nothing. The first run (no state yet) records the state and emits
for every dataset root present, so a fresh deployment retrains on what is already there. Events are POSTed to
the Prefect API and count as delivered only once it accepted them; the state saved advances only the roots
whose event was delivered (:func:`scene.ops.polling.announce`), and the run fails when any was not, so the
next run re-emits it. A failed save means a repeated event next time, never a lost one: each event's id is the
change id of the root's listing, the id the bridge and the reconcile give that state, so a repeat is one change.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from scene.data import scope, storage
from scene.ops import notifications, polling, prefect_events
from tasks.common import S3_RETRIES, S3_TIMEOUT_S, s3, settings

STATE_VERSION = 1


def _state_uri(state_key: str) -> str:
    return f"s3://{settings().artifact_bucket}/{state_key.lstrip('/')}"


@task(cache_policy=NO_CACHE, name="load watch state", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
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


@task(cache_policy=NO_CACHE, name="list objects", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def scan(prefix_uri: str) -> dict[str, str]:
    """``{key: etag}`` of the image objects under the prefix."""
    loc = storage.parse(prefix_uri)
    if not loc.is_s3:
        raise ValueError(f"prefix_uri {prefix_uri!r}: the watch flow polls an S3 prefix (s3://bucket/prefix/)")
    return polling.snapshot(s3(), notifications.polling_config(loc.bucket or "", loc.key))


@task(cache_policy=NO_CACHE, name="save watch state", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def save_state(state_key: str, prefix_uri: str, objects: dict[str, str]) -> str:
    """Write the state; return its URI."""
    uri = _state_uri(state_key)
    doc = {"version": STATE_VERSION, "prefix": prefix_uri, "saved": datetime.now(UTC).isoformat(),
           "objects": objects}
    storage.write_bytes(uri, json.dumps(doc, indent=1, sort_keys=True).encode(), s3())
    return uri


def _plain(value: Any) -> str | None:
    """A Prefect setting's value as text (secret settings unwrapped); None when unset."""
    return (value.get_secret_value() if hasattr(value, "get_secret_value") else value) or None


def _emitter() -> Any:
    """Deliver an event to this run's Prefect API and wait for its answer (raises unless it was accepted)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL

    api, key, auth = PREFECT_API_URL.value(), _plain(PREFECT_API_KEY.value()), _plain(PREFECT_API_AUTH_STRING.value())
    return lambda ev: prefect_events.emit_prefect_event(api, ev, api_key=key, auth_string=auth)


@flow(name="watch", log_prints=True, timeout_seconds=2 * S3_TIMEOUT_S)
def watch(prefix_uri: str = "s3://scene-data/datasets/", state_key: str = "sensors/watch-state.json") -> dict:
    """Emit ``scene.data.arrived`` per dataset root with new or changed images since the last run."""
    scope.require_state_key(state_key)  # only under sensors/, never another sensor's file
    log = get_run_logger()
    loc = storage.parse(prefix_uri)
    if not loc.is_s3:
        raise ValueError(f"prefix_uri {prefix_uri!r}: the watch flow polls an S3 prefix (s3://bucket/prefix/)")
    cfg = notifications.polling_config(loc.bucket or "", loc.key)
    old = load_state(state_key)
    new = scan(prefix_uri)
    first = old is None
    state, emitted, failed = polling.announce(cfg, old or {}, new, _emitter(), reason="first poll" if first else "poll")
    for data in emitted:
        log.info("emitted %s for %s", cfg.event_name, data)
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
    if first or state != before:
        summary["state"] = save_state(state_key, prefix_uri, state)
    else:
        summary["state"] = _state_uri(state_key)
    if failed:  # the state kept these roots as they were: the next run announces them again
        raise RuntimeError(f"could not announce {len(failed)} datasets (the next run retries): {failed}")
    if not emitted:
        log.info("no new or changed images under %s (%d objects)", prefix_uri, len(new))
    return summary
