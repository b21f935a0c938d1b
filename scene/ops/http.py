"""A small plain HTTP JSON client for what is not a Prefect API call: health probes (S3 gateway, Prefect's open
``/api/health``, the event bridge), the bridge's own ``/health`` counters (stdlib only, never via a proxy).

It sends only the headers a caller passes: never Prefect credentials (the Prefect API is called with Prefect's own
client, :mod:`scene.ops.prefect_api`), and it does not retry (a 503 is returned at once: e.g. the bridge's
connection limit).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback services: never via a proxy


def auth_headers(api_key: str | None = None, auth_string: str | None = None) -> dict[str, str]:
    """The Authorization header Prefect's client sends: ``Basic`` for an auth string (which wins), else ``Bearer``
    for an API key; none for an open server (for tests and tools that call a route by hand)."""
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


class Unreachable(OSError):
    """The server did not answer (refused, reset, timed out); the message names the URL and why."""


def call(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:
    """``(status, parsed JSON, else text, else None)`` of one request; raises :class:`Unreachable`.

    ``body`` is sent as JSON when not None. HTTP error statuses are returned, not raised.
    """
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Accept": "application/json", **({"Content-Type": "application/json"} if data is not None else {}),
            **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError, TimeoutError) as err:  # incl. http.client.RemoteDisconnected
        raise Unreachable(f"{method} {url}: no answer ({getattr(err, 'reason', err)})") from err
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def status_of(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """Like :func:`call`, but ``(0, None)`` when the server cannot be reached (health probes)."""
    try:
        return call(method, url, body, timeout=timeout)
    except Unreachable:
        return 0, None
