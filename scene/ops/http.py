"""One small HTTP JSON client for the bridge, the stack and ``scene runs watch`` (stdlib only, never a proxy).

Requests to a Prefect API carry its credentials without each caller passing them: a URL under a base registered
with :func:`register_auth` (``scene stack up`` registers its server), or under ``PREFECT_API_URL``, gets
``Authorization: Basic base64(PREFECT_API_AUTH_STRING)`` (an auth-string server) or ``Bearer PREFECT_API_KEY``
(Prefect Cloud). Other URLs (S3 health, the bridge, webhooks) never see them.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback services: never via a proxy


_AUTH: dict[str, dict[str, str]] = {}  # API base URL -> its Authorization header


def auth_headers(api_key: str | None = None, auth_string: str | None = None) -> dict[str, str]:
    """The Authorization header for an auth-string server or Prefect Cloud (api key); none for an open server.

    The auth string wins when both are set, as in Prefect's own client.
    """
    if auth_string:
        return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}
    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    return {}


def register_auth(api_url: str, *, auth_string: str | None = None, api_key: str | None = None) -> None:
    """Send these credentials with every request under ``api_url`` from this process (``None`` both: forget)."""
    header = auth_headers(api_key, auth_string)
    if header:
        _AUTH[api_url.rstrip("/")] = header
    else:
        _AUTH.pop(api_url.rstrip("/"), None)


def _under(url: str, base: str) -> bool:
    base = base.rstrip("/")
    return url == base or url.startswith(base + "/") or url.startswith(base + "?")


def auth_for(url: str) -> dict[str, str]:
    """The Authorization header a request to ``url`` carries: a registered base, else ``PREFECT_API_URL``'s."""
    for base, header in _AUTH.items():
        if _under(url, base):
            return header
    env_api = os.environ.get("PREFECT_API_URL")
    if env_api and _under(url, env_api):
        return auth_headers(os.environ.get("PREFECT_API_KEY"), os.environ.get("PREFECT_API_AUTH_STRING"))
    return {}


class Unreachable(OSError):
    """The server did not answer (refused, reset, timed out); the message names the URL and why."""


BUSY = {"exception_message": "Service Unavailable"}  # a Prefect server's 503 for an error worth retrying
BUSY_RETRIES_S = (0.5, 1.0, 2.0, 4.0, 4.0)  # waits before retrying a busy answer (Prefect's client retries too)


def call(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:
    """``(status, parsed JSON, else text, else None)`` of one request; raises :class:`Unreachable`.

    ``body`` is sent as JSON when not None. HTTP error statuses are returned, not raised. A Prefect API URL gets
    its credentials (:func:`auth_for`) unless ``headers`` set ``Authorization``. A Prefect server's retryable 503
    (its database busy, e.g. SQLite locked on a loaded machine; nothing was changed) is retried after
    :data:`BUSY_RETRIES_S`, as Prefect's own client does.
    """
    for wait in (*BUSY_RETRIES_S, None):
        status, answer = _call_once(method, url, body, headers, timeout)
        if status != 503 or answer != BUSY or wait is None:
            return status, answer
        time.sleep(wait)
    raise AssertionError("unreachable")


def _call_once(method: str, url: str, body: Any, headers: dict[str, str] | None, timeout: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    given = headers or {}
    auth = {} if any(k.lower() == "authorization" for k in given) else auth_for(url)
    hdrs = {"Accept": "application/json", **({"Content-Type": "application/json"} if data is not None else {}),
            **auth, **given}
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
