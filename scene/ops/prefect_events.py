"""Events out: the ``scene.data.arrived`` event and its delivery to the Prefect API, without importing Prefect.

``POST {api}/events`` with a JSON list of events (the route ``prefect.server.api.events.create_events``,
answers 204). An OSS server without auth needs no header; ``PREFECT_SERVER_API_AUTH_STRING`` servers need
``Authorization: Basic base64(auth_string)``, Prefect Cloud ``Authorization: Bearer <api key>``. Automations
(deployment triggers) see an event as soon as it is accepted and skip an event id they have already seen, so
re-sending the same event (same ``id``) after a lost reply starts nothing twice. ``POST {api}/events/filter``
shows it once the server's event persister has flushed it (every 5 s by default; 2.5-5 s on the local stack).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from scene.ops import http
from scene.ops.notifications import EVENT_NAME, BridgeConfig

MAX_KEYS = 1000  # keys listed in one event's payload at most (``count`` has the full number)


class EmitError(RuntimeError):
    """An event could not be delivered to the Prefect API; the message says where and why."""


def now_iso() -> str:
    """The current UTC time as Prefect writes it."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def dataset_event(cfg: BridgeConfig, bucket: str, root: str, keys: Iterable[str], reason: str = "", *,
                  count: int | None = None, event_id: str | None = None) -> dict:
    """The ``scene.data.arrived`` Prefect event (JSON-able dict) for new objects under one dataset root.

    ``keys``: (a sample of) the new keys; ``count``: how many there were (default: the distinct keys given).
    ``event_id``: reuse an id (a retried batch keeps its id, so the server can drop the duplicate).
    """
    keys = list(dict.fromkeys(keys))
    payload: dict[str, Any] = {
        "bucket": bucket,
        "prefix": root,
        "data": f"s3://{bucket}/{root}",
        "keys": keys[:MAX_KEYS],
        "count": len(keys) if count is None else count,
    }
    if reason:
        payload["reason"] = reason
    return {
        "id": event_id or str(uuid.uuid4()),
        "occurred": now_iso(),
        "event": cfg.event_name,
        "resource": {"prefect.resource.id": f"scene.dataset.{bucket}/{root}", "scene.bucket": bucket,
                     "scene.prefix": root},
        "related": [],
        "payload": payload,
    }


def auth_headers(api_key: str | None, auth_string: str | None) -> dict[str, str]:
    """The Authorization header for Prefect Cloud (api key) or an auth-string server; none for plain OSS."""
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    return {}


def prefect_request(api_url: str, path: str, body: Any, *, api_key: str | None = None,
                    auth_string: str | None = None, timeout: float = 10.0, method: str = "POST") -> tuple[int, Any]:
    """Send JSON to the Prefect API; (status, parsed JSON or None). Raises :class:`EmitError` if unreachable."""
    url = api_url.rstrip("/") + path
    try:
        return http.call(method, url, body, headers=auth_headers(api_key, auth_string), timeout=timeout)
    except http.Unreachable as err:
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
