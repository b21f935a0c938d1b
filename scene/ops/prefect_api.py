"""Prefect's own client for the operations code (watch, events, the stack's pools and automations).

:func:`connection` is where the API URL and credentials come from: the values a caller passes (the stack passes
its own server and auth string), else ``PREFECT_API_URL`` / ``PREFECT_API_AUTH_STRING`` / ``PREFECT_API_KEY`` from
the environment, else Prefect's settings (the active profile: ``prefect config set PREFECT_API_URL=...``). The
environment is read at each call, so a variable set after Prefect was imported still wins, as it does for
Prefect's own CLI. :func:`client` opens Prefect's synchronous client on it: Prefect's auth headers (``Basic`` for an
auth string, which wins, else ``Bearer`` for an API key), CSRF tokens, and retries of a busy server
(429/502/503/408, ``PREFECT_CLIENT_MAX_RETRIES`` times with backoff or the server's ``Retry-After``).
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

_REGISTERED: dict[str, tuple[str | None, str | None]] = {}  # API URL -> (auth string, api key) of this process
_TLS: dict[str, ssl.SSLContext] = {}  # one verifying TLS context per process (loading the CA bundle costs ~20 ms)
_LOCK = threading.Lock()


class Unreachable(OSError):
    """The Prefect API did not answer (refused, reset, timed out); the message names the URL and why."""


def register_auth(api_url: str, *, auth_string: str | None = None, api_key: str | None = None) -> None:
    """Send these credentials with every call to ``api_url`` from this process (both ``None``: forget)."""
    url = api_url.rstrip("/")
    if auth_string or api_key:
        _REGISTERED[url] = (auth_string, api_key)
    else:
        _REGISTERED.pop(url, None)

NO_API = ("no Prefect API URL: run eval \"$(scene stack env)\" (the local stack), or point Prefect at your server "
          "(prefect config set PREFECT_API_URL=http://HOST:4200/api, or export PREFECT_API_URL)")


def _setting(name: str) -> str | None:
    """A Prefect connection setting: the environment now, else Prefect's current settings (profile)."""
    value = os.environ.get(name)
    if value:
        return value
    import prefect.settings

    return getattr(prefect.settings, name).value() or None


def connection(api_url: str | None = None, *, api_key: str | None = None,
               auth_string: str | None = None) -> tuple[str | None, str | None, str | None]:
    """``(api url, auth string, api key)``: each the one given, else Prefect's (env, then profile).

    With an ``api_url`` given and no credential given: the credentials registered for it (:func:`register_auth`),
    else the configured ones (as Prefect would).
    """
    url = (api_url or _setting("PREFECT_API_URL") or "").rstrip("/") or None
    if auth_string or api_key:
        return url, auth_string, api_key
    if url in _REGISTERED:
        return (url, *_REGISTERED[url])
    return url, _setting("PREFECT_API_AUTH_STRING"), _setting("PREFECT_API_KEY")


def _tls() -> ssl.SSLContext | None:
    """The TLS context Prefect's client would build (PREFECT_API_SSL_CERT_FILE, else certifi), made once."""
    import prefect.settings

    if prefect.settings.PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        return None  # Prefect's client builds its non-verifying context itself
    with _LOCK:
        if "verify" not in _TLS:
            import certifi

            cafile = prefect.settings.PREFECT_API_SSL_CERT_FILE.value() or certifi.where()
            _TLS["verify"] = ssl.create_default_context(cafile=cafile)
        return _TLS["verify"]


def client(api_url: str | None = None, *, api_key: str | None = None, auth_string: str | None = None,
           timeout: float | None = None) -> SyncPrefectClient:
    """Prefect's synchronous client for :func:`connection`'s API (use it as a context manager).

    Raises ValueError (:data:`NO_API`) when no URL is configured anywhere.
    """
    from prefect.client.orchestration import SyncPrefectClient

    url, auth, key = connection(api_url, api_key=api_key, auth_string=auth_string)
    if not url:
        raise ValueError(NO_API)
    httpx_settings: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    tls = _tls()
    if tls is not None:
        httpx_settings["verify"] = tls
    return SyncPrefectClient(url, auth_string=auth, api_key=key, httpx_settings=httpx_settings or None)


def request(method: str, api_url: str | None, path: str, body: Any = None, *, api_key: str | None = None,
            auth_string: str | None = None, timeout: float | None = None) -> tuple[int, Any]:
    """``(status, parsed JSON or text or None)`` of one call to a route of the Prefect API, through Prefect's client
    (its auth, CSRF token and retries of a busy server). HTTP error statuses are returned; raises
    :class:`Unreachable` when the server does not answer."""
    import httpx

    with client(api_url, api_key=api_key, auth_string=auth_string, timeout=timeout) as c:
        try:
            response = c.request(method, path, json=body)  # type: ignore[arg-type]
        except httpx.HTTPStatusError as err:
            response = err.response
        except httpx.HTTPError as err:
            base = str(c.api_url).rstrip("/")
            raise Unreachable(f"{method} {base}{path}: no answer ({type(err).__name__}: {err})") from err
    try:
        return response.status_code, response.json() if response.content else None
    except ValueError:
        return response.status_code, response.text


@contextmanager
def settings_for(api_url: str | None = None, *, api_key: str | None = None,
                 auth_string: str | None = None) -> Iterator[None]:
    """Point Prefect's settings at :func:`connection`'s API for the block (``temporary_settings``): for Prefect
    APIs that open their own client (``Block.save``); a credential not set is cleared, never another server's."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    url, auth, key = connection(api_url, api_key=api_key, auth_string=auth_string)
    if not url:
        raise ValueError(NO_API)
    values = {PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth, PREFECT_API_KEY: key}
    with temporary_settings(updates={k: v for k, v in values.items() if v},
                            restore_defaults=[k for k, v in values.items() if not v]):
        yield
