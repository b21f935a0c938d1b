"""Events out: the ``scene.data.arrived`` event and its confirmed delivery to the Prefect API.

``POST {api}/events`` with a JSON list of events (the route ``prefect.server.api.events.create_events``,
answers 204), sent with Prefect's own client (:mod:`scene.ops.prefect_api`: its auth header for an auth-string
server or Prefect Cloud; it retries a busy server (503) and a request whose reply was lost, with the same body,
so the same event ids). Not ``prefect.events.emit_event``: that hands the event to
a background worker over a websocket and confirms nothing, while the bridge must know the server has the event
before it forgets the notification (and re-sends under the same id otherwise). Automations
(deployment triggers) see an event as soon as it is accepted and skip an event id they have already seen, so
re-sending the same event (same ``id``) after a lost reply starts nothing twice -- but only while the server
process lives (Prefect 3.9 keeps the "seen" ids in memory: ``server/events/ordering/memory.py``, a TTLCache of 10000
ids for 30 min; the event table dedupes by id with ``ON CONFLICT DO NOTHING``, the triggers do not read it). So every
announcement of one change carries the same :func:`change_id` (uuid5 of the dataset and a fingerprint of its
listing), the trigger passes it to the run as ``change_id``, and ``retrain`` ends early as a duplicate when an
earlier run of that change exists (``flows/retrain.py``). ``POST {api}/events/filter``
shows it once the server's event persister has flushed it (every 5 s by default; 2.5-5 s on the local stack).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from scene.ops import http, prefect_api
from scene.ops.notifications import EVENT_NAME, BridgeConfig

MAX_KEYS = 1000  # keys listed in one event's payload at most (``count`` has the full number)


class EmitError(RuntimeError):
    """An event could not be delivered to the Prefect API; the message says where and why."""


CHANGE_NAMESPACE = uuid.UUID("6f1d3c9e-2b7a-5c41-9e0f-5ce9e0da7a11")  # fixed: ids must agree across versions


def content_fingerprint(objects: Mapping[str, str]) -> str:
    """A fingerprint of ``{key: etag}`` (the image objects of one dataset root): sha256 of the sorted pairs."""
    h = hashlib.sha256()
    for key in sorted(objects):
        h.update(f"{key}\t{objects[key]}\n".encode())
    return h.hexdigest()


def change_id(data_uri: str, fingerprint: str) -> str:
    """The deterministic event id of one change: uuid5 of the dataset URI and its content fingerprint.

    The bridge, a resend, the reconcile and the polling sensor all announce a root's state with this id, so the
    same state announced twice is one change (dropped by the server or ended by ``retrain`` as a duplicate).
    """
    return str(uuid.uuid5(CHANGE_NAMESPACE, f"{data_uri}|{fingerprint}"))


def root_objects(listing: Mapping[str, str], root: str) -> dict[str, str]:
    """The ``{key: etag}`` entries of a listing under one dataset root."""
    return {k: v for k, v in listing.items() if k.startswith(root)}


def now_iso() -> str:
    """The current UTC time as Prefect writes it."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def dataset_event(cfg: BridgeConfig, bucket: str, root: str, keys: Iterable[str], reason: str = "", *,
                  count: int | None = None, event_id: str | None = None, change: str | None = None) -> dict:
    """The ``scene.data.arrived`` Prefect event (JSON-able dict) for new objects under one dataset root.

    ``keys``: (a sample of) the new keys; ``count``: how many there were (default: the distinct keys given).
    ``event_id``: reuse an id (a retried batch keeps its id, so the server can drop the duplicate); it is also
    the payload's ``change`` (the trigger passes it to the run as ``change_id``); ``change``: set it apart from
    the id (a re-sent event gets a fresh id but names the same change).
    """
    keys = list(dict.fromkeys(keys))
    event_id = event_id or str(uuid.uuid4())
    payload: dict[str, Any] = {
        "bucket": bucket,
        "prefix": root,
        "data": f"s3://{bucket}/{root}",
        "keys": keys[:MAX_KEYS],
        "count": len(keys) if count is None else count,
        "change": change or event_id,
    }
    if reason:
        payload["reason"] = reason
    return {
        "id": event_id,
        "occurred": now_iso(),
        "event": cfg.event_name,
        "resource": {"prefect.resource.id": f"scene.dataset.{bucket}/{root}", "scene.bucket": bucket,
                     "scene.prefix": root},
        "related": [],
        "payload": payload,
    }


def resend_of(event: dict, attempt: int) -> dict:
    """The same announcement under a fresh, deterministic id (``change`` kept): the server remembers every id it
    processed (matching or not), so an event that found no trigger (``prefect deploy`` recreating it) or was lost
    in a restart must be sent under another id to reach the trigger; ``retrain`` dedupes by ``change``."""
    change = (event.get("payload") or {}).get("change") or event["id"]
    new_id = str(uuid.uuid5(CHANGE_NAMESPACE, f"{change}|resend {attempt}"))
    return {**event, "id": new_id, "occurred": now_iso(), "payload": {**event.get("payload", {}), "change": change}}


def flow_runs(api_url: str | None, flows: list[str], states: list[str] | None = None, limit: int = 200,
              **auth: Any) -> list[dict[str, Any]]:
    """The newest ``limit`` runs of the named flows (in one of ``states`` when given), newest first, as the REST
    API's JSON; through Prefect's client with typed filters. Raises :class:`EmitError` naming the API."""
    import httpx
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))) if states else None
    try:
        with prefect_api.client(api_url, **auth) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=flows)),
                                         flow_run_filter=run_filter, sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                                         limit=limit)
    except ValueError as err:  # no API URL configured
        raise EmitError(str(err)) from None
    except httpx.HTTPStatusError as err:
        raise EmitError(f"Prefect API {api_url}: reading {flows} flow runs answered {err.response.status_code}: "
                        f"{err.response.text[:300]}") from err
    except httpx.HTTPError as err:
        raise EmitError(f"Prefect API {api_url}: cannot connect ({type(err).__name__}: {err}); is the server "
                        "running? Check PREFECT_API_URL") from err
    return [r.model_dump(mode="json") for r in runs]


def runs_for_changes(api_url: str, changes: Iterable[str], flow: str = "retrain", limit: int = 200,
                     **auth: Any) -> set[str]:
    """The change ids among ``changes`` that a ``flow`` run (any state) was created for (newest ``limit``)."""
    wanted = set(changes)
    if not wanted:
        return set()
    runs = flow_runs(api_url, [flow], limit=limit, **auth)
    return {str((r.get("parameters") or {}).get("change_id")) for r in runs} & wanted


def prefect_request(api_url: str, path: str, body: Any, *, api_key: str | None = None,
                    auth_string: str | None = None, timeout: float = 10.0, method: str = "POST") -> tuple[int, Any]:
    """Send JSON to a route of the Prefect API with Prefect's client; (status, parsed JSON or None). Raises
    :class:`EmitError` if unreachable."""
    url = api_url.rstrip("/") + path
    try:
        return prefect_api.request(method, api_url, path, body, api_key=api_key, auth_string=auth_string,
                                   timeout=timeout)
    except prefect_api.Unreachable as err:
        raise EmitError(f"Prefect API {url}: cannot connect ({err.__cause__ or err}); is the server running? "
                        "Check PREFECT_API_URL") from err


def emit_prefect_event(api_url: str, event: dict, *, api_key: str | None = None, auth_string: str | None = None,
                       timeout: float = 10.0) -> dict:
    """Send one event to the Prefect API (``POST {api}/events``); return it (with ``id``/``occurred`` set).

    ``event`` needs ``event`` (name) and ``resource`` (with ``prefect.resource.id``). Raises
    :class:`EmitError` naming the URL and the server's answer when it is not accepted: when this returns,
    the server has the event (delivery is confirmed).
    """
    if not api_url:
        raise EmitError("no Prefect API URL to send events to; set PREFECT_API_URL (http://HOST:PORT/api)")
    if not event.get("event") or not isinstance(event.get("resource"), dict) \
            or "prefect.resource.id" not in event["resource"]:
        raise EmitError(f"not a Prefect event: needs 'event' and resource['prefect.resource.id'], got {event}")
    event = {"id": str(uuid.uuid4()), "occurred": now_iso(), "related": [], "payload": {}, **event}
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
    try:
        status, body = http.call("GET", url.rstrip("/") + "/health", headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout)
    except http.Unreachable as err:
        raise EmitError(f"event bridge {url}: no health answer ({err.__cause__ or err}); is it running?") from err
    if status != 200 or not isinstance(body, dict):
        raise EmitError(f"event bridge {url}: /health answered {status}: {str(body)[:200]}")
    if "emitted" not in body:
        raise EmitError(f"event bridge {url}: the token was not accepted, so it reports no counters; "
                        "pass the bridge's SCENE_EVENTS_TOKEN")
    return body
