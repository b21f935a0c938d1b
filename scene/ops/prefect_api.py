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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

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

    With an ``api_url`` given and no credential given, the configured credentials are used (as Prefect would).
    """
    url = (api_url or _setting("PREFECT_API_URL") or "").rstrip("/") or None
    if auth_string or api_key:
        return url, auth_string, api_key
    return url, _setting("PREFECT_API_AUTH_STRING"), _setting("PREFECT_API_KEY")


def client(api_url: str | None = None, *, api_key: str | None = None, auth_string: str | None = None,
           timeout: float | None = None) -> SyncPrefectClient:
    """Prefect's synchronous client for :func:`connection`'s API (use it as a context manager).

    Raises ValueError (:data:`NO_API`) when no URL is configured anywhere.
    """
    from prefect.client.orchestration import SyncPrefectClient

    url, auth, key = connection(api_url, api_key=api_key, auth_string=auth_string)
    if not url:
        raise ValueError(NO_API)
    httpx_settings = {"timeout": timeout} if timeout is not None else None
    return SyncPrefectClient(url, auth_string=auth, api_key=key, httpx_settings=httpx_settings)
