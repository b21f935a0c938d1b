"""Benchmark: requests/s of the event bridge's ``POST /notify``, stdlib server (before) against Starlette/uvicorn.

One process: the bridge under test in background threads, one client sending ``--requests`` valid MinIO
notifications (one object each, a new key each time, all under one dataset root, quiet period 60 s so nothing is
emitted), either on one keep-alive connection (how the gateway posts) or a new connection per request; the
client sets TCP_NODELAY as the gateway's Go client does. The stdlib server writes headers and body in two
sends without TCP_NODELAY, so on a keep-alive connection each answer waits for the client's delayed ACK
(~40 ms); the uvicorn bridge sets TCP_NODELAY (asyncio does, given a socket created with ``IPPROTO_TCP``). The store
is SQLite in a temporary folder (``--store``) or none (the HTTP layer alone). Each figure is the best of
``--rounds`` (the machine is shared).

    .venv/bin/python benchmarks/bridge_http.py [--requests 200] [--rounds 5] [--before 5270e72]

``--before``: a commit whose ``scene/ops/bridge.py`` is the stdlib server (loaded from ``git show``).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scene.ops import bridge as after  # noqa: E402
from scene.ops.notifications import BridgeConfig  # noqa: E402

TOKEN = "bench-token"


def _before(rev: str) -> ModuleType:
    """The bridge module as of ``rev``."""
    src = subprocess.run(["git", "show", f"{rev}:scene/ops/bridge.py"], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp()) / "bridge_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("bridge_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bridge_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def _body(i: int) -> bytes:
    key = f"datasets/bench/x/{i}.jpg"
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"scene-data/{key}", "Records": [{
        "eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "scene-data"},
                                                   "object": {"key": key, "size": 2, "eTag": f"e{i}"}}}]}).encode()


def _connect(server: Any) -> http.client.HTTPConnection:
    """A client connection with TCP_NODELAY, as Go's HTTP client (the gateway) has (http.client sends headers and
    body in two writes)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _round(server: Any, n: int, keep_alive: bool, start: int) -> float:
    """Seconds for ``n`` POSTs."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    t0 = time.perf_counter()
    conn = _connect(server)
    for i in range(start, start + n):
        if not keep_alive and i > start:
            conn = _connect(server)
        conn.request("POST", "/notify", body=_body(i), headers=headers)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
        if not keep_alive:
            conn.close()
    took = time.perf_counter() - t0
    conn.close()
    return took


def measure(mod: ModuleType, n: int, rounds: int, keep_alive: bool, store: bool) -> float:
    """Best requests/s over ``rounds``."""
    with tempfile.TemporaryDirectory() as tmp:
        server = mod.serve(BridgeConfig(token=TOKEN, quiet_seconds=60), port=0, emit=lambda e: None,
                           store=str(Path(tmp) / "e.sqlite") if store else None)
        try:
            _round(server, 20, keep_alive, 10**6)  # warm-up
            return max(n / _round(server, n, keep_alive, r * n) for r in range(rounds))
        finally:
            server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--before", default="5270e72", help="a commit with the stdlib bridge")
    a = p.parse_args()
    before = _before(a.before)
    rows = []
    for store in (False, True):
        for keep_alive in (True, False):
            b = measure(before, a.requests, a.rounds, keep_alive, store)
            u = measure(after, a.requests, a.rounds, keep_alive, store)
            rows.append({"store": "SQLite" if store else "none",
                         "connection": "keep-alive" if keep_alive else "new per request",
                         "stdlib_rps": round(b, 1), "uvicorn_rps": round(u, 1), "ratio": round(u / b, 2)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
