"""Fixtures for tests against the real local stack (S3 gateway + Prefect server + workers).

A session-scoped stack is started once in a temporary state folder on free ports, with a tiny HTTP
listener as its bucket-notification webhook, and stopped at the end. Set
``SCENE_TEST_REUSE_STACK=<state_dir>`` to run the tests against an already running stack instead
(tests that need the test webhook or restart the stack are then skipped).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scene.ops import stack as stack_mod
from scene.ops.stack import StackInfo

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_TOKEN = "test-webhook-token"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebhookListener:
    """A tiny HTTP server that records every POST (path, headers, JSON body)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = body.decode(errors="replace")
                with listener._cond:
                    record = {"path": self.path, "headers": dict(self.headers), "body": payload}
                    listener.requests.append(record)
                    listener._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """The first recorded request matching ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for req in self.requests:
                    if predicate(req):
                        return req
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching webhook call within {timeout}s; got {self.requests}")
                self._cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def webhook_listener() -> Iterator[WebhookListener]:
    listener = WebhookListener()
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def stack_args(
    tmp_path_factory: pytest.TempPathFactory, webhook_listener: WebhookListener
) -> dict[str, Any] | None:
    """The keyword arguments the session stack was started with (None when reusing a running stack)."""
    if os.environ.get("SCENE_TEST_REUSE_STACK"):
        return None
    return {
        "state_dir": tmp_path_factory.mktemp("stack") / "state",
        "s3_port": free_port(),
        "prefect_port": free_port(),
        "pools": ("default", "gpu"),
        "workdir": REPO,
        "webhook_url": webhook_listener.url,
        "webhook_token": WEBHOOK_TOKEN,
    }


@pytest.fixture(scope="session")
def stack(stack_args: dict[str, Any] | None) -> Iterator[StackInfo]:
    """A running local stack for the whole session."""
    reuse = os.environ.get("SCENE_TEST_REUSE_STACK")
    if stack_args is None:
        assert reuse
        report = stack_mod.status(reuse)
        if not report.get("healthy"):
            pytest.fail(f"SCENE_TEST_REUSE_STACK={reuse}: the stack there is not healthy: {report}")
        yield stack_mod.info(reuse)
        return
    info = stack_mod.up(**stack_args)
    try:
        yield info
    finally:
        stack_mod.down(stack_args["state_dir"])


@pytest.fixture(scope="session")
def env(stack: Any) -> Iterator[dict[str, str]]:
    """Point this process (boto3, Prefect client, scene settings) at the test stack."""
    from scene.ops import stack as stack_mod
    from tests.event_stack import stack_environ

    lines = stack_mod.env_lines(stack.state_dir)
    values = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    values = {k: v.strip("'\"") for k, v in values.items()}
    folders = {"SCENE_WORK_DIR": str(Path(stack.state_dir) / "work"),
               "SCENE_FEATURE_CACHE": str(Path(stack.state_dir) / "features")}
    with stack_environ({**values, **folders}):
        yield values


@pytest.fixture(scope="session")
def s3(env: dict[str, str]) -> Any:
    from scene.data.storage import s3_client
    from scene.settings import Settings

    return s3_client(Settings.from_env())
