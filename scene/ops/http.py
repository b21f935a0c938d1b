"""One small HTTP JSON client for the bridge, the stack and ``scene runs watch`` (stdlib only, never a proxy)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback services: never via a proxy


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
