"""scene.ops talks to the Prefect API through Prefect's own client: a busy server (503) is retried by the client,
401 gets a clear message, the URL comes from Prefect's settings (a profile too), and plain HTTP calls
(scene.ops.http: S3 and bridge health, webhooks) never carry Prefect credentials nor retry."""

from __future__ import annotations

import http.server as stdlib_http
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from scene.ops import http, watch

RUN = str(uuid.UUID(int=7))
BUSY = {"exception_message": "Service Unavailable"}  # a Prefect server's 503 when its database is busy


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A server answering each request with the next (status, body) of ``state["answers"]`` (a busy answer
    carries ``Retry-After: 0``, so the client's retries do not wait); records each request's path and
    Authorization header. Prefect's connection variables are cleared."""
    for var in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
        monkeypatch.delenv(var, raising=False)
    state: dict[str, Any] = {"answers": [(404, {"detail": "Not found"})], "seen": []}

    class Handler(stdlib_http.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body = state["answers"][min(len(state["seen"]), len(state["answers"]) - 1)]
            state["seen"].append((self.command, self.path, self.headers.get("Authorization")))
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    srv = stdlib_http.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["api"] = f"http://127.0.0.1:{srv.server_address[1]}/api"
    yield state
    srv.shutdown()
    srv.server_close()


def test_a_busy_prefect_server_is_retried_by_prefects_client(server: dict[str, Any]) -> None:
    server["answers"] = [(503, BUSY), (503, BUSY), (404, {"detail": "Flow run not found"})]
    api = watch.Api(server["api"])
    with pytest.raises(watch.WatchError, match=r"not found .404. — check the run id"):
        api.flow_run(RUN)
    api.close()
    assert [s[1] for s in server["seen"]] == [f"/api/flow_runs/{RUN}"] * 3


def test_unauthorized_names_the_variables_to_set(server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "scene:wrong")
    server["answers"] = [(401, {"exception_message": "Unauthorized"})]
    api = watch.Api(server["api"])
    with pytest.raises(watch.WatchError, match=r"unauthorized .401. — set PREFECT_API_AUTH_STRING"):
        api.flow_run(RUN)
    api.close()
    assert server["seen"][0][2] == "Basic c2NlbmU6d3Jvbmc="  # base64("scene:wrong"): Prefect's setting was sent


def test_the_api_url_comes_from_the_prefect_profile(server: dict[str, Any]) -> None:
    from prefect.context import use_profile
    from prefect.settings import PREFECT_API_URL, Profile

    with (pytest.raises(watch.WatchError, match="prefect config set PREFECT_API_URL"),
          use_profile(Profile(name="none", settings={}), include_current_context=False)):
        watch.Api()
    with use_profile(Profile(name="o-test", settings={PREFECT_API_URL: server["api"]}), include_current_context=False):
        api = watch.Api()  # as after `prefect config set PREFECT_API_URL=...`: nothing in the environment
        with pytest.raises(watch.WatchError, match=f"{server['api']}: flow run {RUN}: not found"):
            api.flow_run(RUN)
        api.close()
    with pytest.raises(watch.WatchError, match="not a flow run id"):
        watch.Api(server["api"]).flow_run("brave-fox")


def test_plain_http_sends_no_prefect_credentials_and_returns_a_503_at_once(
        server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", server["api"])
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "scene:secret")
    server["answers"] = [(503, "Service Unavailable")]  # e.g. the bridge's connection limit
    assert http.call("POST", server["api"] + "/events", {}) == (503, "Service Unavailable")
    assert http.status_of("GET", server["api"] + "/health")[0] == 503
    assert server["seen"] == [("POST", "/api/events", None), ("GET", "/api/health", None)]


def test_registered_credentials_go_only_to_their_api(server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's auth string (registered for its API) goes to that API; any other URL gets the configured one
    (here none); a URL that merely starts with the registered one is another API."""
    from scene.ops import prefect_api

    monkeypatch.setenv("PREFECT_API_URL", server["api"] + "-other")
    server["answers"] = [(200, True)]
    prefect_api.register_auth(server["api"], auth_string="scene:registered")
    try:
        for api in (server["api"], server["api"] + "-evil", server["api"] + "/"):
            assert prefect_api.request("GET", api, "/health") == (200, True)
    finally:
        prefect_api.register_auth(server["api"])
    assert prefect_api.request("GET", server["api"], "/health") == (200, True)  # forgotten
    basic = http.auth_headers(auth_string="scene:registered")["Authorization"]
    assert [(s[1], s[2]) for s in server["seen"]] == [("/api/health", basic), ("/api-evil/health", None),
                                                     ("/api/health", basic), ("/api/health", None)]
