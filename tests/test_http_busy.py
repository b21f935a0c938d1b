"""scene.ops.http retries a Prefect server's retryable 503 (database busy) and nothing else."""

from __future__ import annotations

import http.server as stdlib_http
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from scene.ops import http


@pytest.fixture
def server() -> Iterator[dict[str, Any]]:
    """A server answering each POST with the next (status, body) of ``state["answers"]``; counts requests."""
    state: dict[str, Any] = {"answers": [], "seen": 0}

    class Handler(stdlib_http.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body = state["answers"][min(state["seen"], len(state["answers"]) - 1)]
            state["seen"] += 1
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    srv = stdlib_http.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{srv.server_address[1]}/api/work_pools/gpu"
    yield state
    srv.shutdown()
    srv.server_close()


def test_a_busy_prefect_server_is_retried_until_it_answers(server: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "BUSY_RETRIES_S", (0.0, 0.0, 0.0))
    server["answers"] = [(503, http.BUSY), (503, http.BUSY), (200, {"ok": True})]
    assert http.call("POST", server["url"], {}) == (200, {"ok": True}) and server["seen"] == 3


def test_retries_are_bounded_and_other_503s_are_returned_at_once(server: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "BUSY_RETRIES_S", (0.0, 0.0))
    server["answers"] = [(503, http.BUSY)]
    assert http.call("POST", server["url"], {}) == (503, http.BUSY) and server["seen"] == 3  # 1 + 2 retries
    server.update(answers=[(503, "Service Unavailable")], seen=0)  # e.g. the bridge's connection limit
    assert http.call("POST", server["url"], {}) == (503, "Service Unavailable") and server["seen"] == 1
