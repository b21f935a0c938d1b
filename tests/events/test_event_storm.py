"""Event faults on a real stack (tests/event_stack.py: bridge process, Prefect server, retrain trigger deployed).

- a storm of 1,000 notifications over 3 dataset roots in a few seconds: exactly 3 retrain runs, the bridge's
  counters equal the notifications, and it held at most ``key_sample`` keys per root;
- a lost reply (a real proxy forwards the POST to Prefect, then drops the connection): the retry carries the
  same event id, so one event and one run;
- data that arrived without any event (a bucket without notifications, as when the deployment did not exist):
  ``scene events reconcile`` announces it afterwards, once; and leaves alone data a train-all run waits to train.

The storm is posted to the bridge's webhook directly, in the gateway's (MinIO) format, one POST per object
over keep-alive connections, as the gateway sends them: 1,000 real uploads take minutes on this machine.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

from scene.ops import prefect_api, prefect_events
from scene.ops.bridge import serve
from scene.ops.notifications import KEY_SAMPLE, BridgeConfig
from tests.support import REPO
from tests.support.events import settled, wait_runs
from tests.support.s3io import upload

pytestmark = [pytest.mark.integration, pytest.mark.faults]
UPLOADS, ROOTS = 1000, 3


def _minio(bucket: str, key: str) -> bytes:
    return json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}", "Records": [
        {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {
            "key": urllib.parse.quote(key, safe=""), "size": 10, "eTag": uuid.uuid4().hex}}}]}).encode()


def _post_all(port: int, token: str, bodies: list[bytes], threads: int = 4) -> list[int]:
    """POST every body to /notify over ``threads`` keep-alive connections; the statuses."""
    statuses: list[int] = []
    lock = threading.Lock()

    def send(part: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for body in part:
            conn.request("POST", "/notify", body, {"Authorization": f"Bearer {token}",
                                                   "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            with lock:
                statuses.append(resp.status)
        conn.close()

    workers = [threading.Thread(target=send, args=(bodies[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statuses


def _bridge(estack: dict[str, Any]) -> tuple[int, str, int]:
    state = estack["state"]
    cfg = json.loads((state / "stack.json").read_text())
    token = json.loads((state / "credentials.json").read_text())["events_token"]
    pid = json.loads((state / "pids" / "events.pid").read_text())["pid"]
    return cfg["events_port"], token, pid


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_storm_of_uploads_makes_one_run_per_root_and_loses_nothing(estack: dict[str, Any]) -> None:
    port, token, pid = _bridge(estack)
    env = estack["env"]
    bucket, tag = env["SCENE_DATA_BUCKET"], uuid.uuid4().hex[:6]
    roots = [f"{env['SCENE_DATA_PREFIX']}storm-{tag}-{i}/" for i in range(ROOTS)]
    keys = [f"{roots[i % ROOTS]}sea/{i}.jpg" for i in range(UPLOADS)]
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30  # batches of earlier tests in this session go out first (not counted here)
    while prefect_events.bridge_stats(url, token)["pending"] and time.time() < deadline:
        time.sleep(0.5)
    before = prefect_events.bridge_stats(url, token)
    started = time.monotonic()
    statuses = _post_all(port, token, [_minio(bucket, k) for k in keys])
    posting = time.monotonic() - started
    assert statuses == [200] * UPLOADS
    during = prefect_events.bridge_stats(url, token)
    runs = {r: wait_runs(1, f"s3://{bucket}/{r}") for r in roots}
    settled(still=3.0)
    after = prefect_events.bridge_stats(url, token)
    assert after["objects"] - before["objects"] == UPLOADS and after["received"] - before["received"] == UPLOADS
    assert after["emitted"] - before["emitted"] == ROOTS and after["pending"] == 0
    assert during["keys_held"] <= ROOTS * KEY_SAMPLE and after["peak_keys_held"] <= ROOTS * KEY_SAMPLE < UPLOADS
    runs = {r: wait_runs(1, f"s3://{bucket}/{r}", timeout=1) for r in roots}
    assert {r: len(v) for r, v in runs.items()} == dict.fromkeys(roots, 1)
    counts = {r: int(v[0].parameters["new_objects"]) for r, v in runs.items()}
    assert counts == {r: len([k for k in keys if k.startswith(r)]) for r in roots}
    print(f"storm: {UPLOADS} notifications posted in {posting:.1f} s; {ROOTS} runs; bridge peak keys held "
          f"{after['peak_keys_held']}, peak RSS {_peak_rss_mb(pid):.0f} MB")


class LosingProxy:
    """Forwards POST /api/events to the real Prefect API, but drops the connection before the FIRST reply."""

    def __init__(self, upstream: str) -> None:
        self.forwarded: list[list[dict]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = prefect_api.request("POST", upstream, self.path.removeprefix("/api"), body)
                proxy.forwarded.append(body)
                if len(proxy.forwarded) == 1:  # delivered upstream, reply lost
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # Prefect's client asks for a CSRF token first: 404 (none), as an open server
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_lost_reply_is_retried_with_the_same_event_id(estack: dict[str, Any]) -> None:
    env = estack["env"]
    bucket, root = env["SCENE_DATA_BUCKET"], f"{env['SCENE_DATA_PREFIX']}lost-{uuid.uuid4().hex[:6]}/"
    proxy = LosingProxy(env["PREFECT_API_URL"])
    cfg = BridgeConfig(token="t0ken-lost", bucket=bucket, prefix=env["SCENE_DATA_PREFIX"], quiet_seconds=0.2,
                       prefect_api_url=proxy.url)
    bridge = serve(cfg, port=0)
    try:
        statuses = _post_all(bridge.port, cfg.token, [_minio(bucket, root + k) for k in ("a/1.jpg", "a/2.jpg")], 1)
        assert statuses == [200, 200]
        deadline = time.monotonic() + 20
        while bridge.batcher.emitted < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        # Prefect's client re-sent the request whose reply was lost (the same body: the same event id) itself
        assert bridge.batcher.emit_failures == 0 and bridge.batcher.emitted == 1
    finally:
        bridge.stop()
        proxy.close()
    ids = [batch[0]["id"] for batch in proxy.forwarded]
    assert len(ids) == 2 and ids[0] == ids[1]  # both reached Prefect, with one id
    assert len(wait_runs(1, f"s3://{bucket}/{root}")) == 1
    settled(still=4.0)
    assert len(wait_runs(1, f"s3://{bucket}/{root}", timeout=1)) == 1


def test_reconcile_announces_data_that_no_event_announced(estack: dict[str, Any], tmp_path: Path) -> None:
    from scene.data.synth import make_synthetic

    env, s3 = estack["env"], estack["s3"]
    bucket = f"quiet-{uuid.uuid4().hex[:8]}"  # no bucket notifications: an upload nobody announced
    s3.create_bucket(Bucket=bucket)
    data = f"s3://{bucket}/{env['SCENE_DATA_PREFIX']}missed/"
    upload(s3, make_synthetic(tmp_path / "missed", 1, size=32, seed=7, classes=("sea", "forest")), data)
    time.sleep(2)
    assert wait_runs(1, data, timeout=1) == []
    cli = [str(Path(sys.executable).with_name("scene")), "events", "reconcile", "--bucket", bucket]
    first = subprocess.run(cli, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout)["announced"] == [data]
    assert len(wait_runs(1, data)) == 1
    again = subprocess.run(cli, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == [data]  # its run is still waiting
    settled(still=3.0)
    assert len(wait_runs(1, data, timeout=1)) == 1


def test_reconcile_leaves_data_alone_while_a_train_all_run_for_it_waits(estack: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    """``make run`` uploads, deploys, submits train-all, then reconciles: the data it is about to train on must not
    get a retrain too (the pools are paused here, so the train-all run stays Scheduled)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from scene.data.synth import make_synthetic

    env, s3 = estack["env"], estack["s3"]
    bucket = f"quiet-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    data = f"s3://{bucket}/{env['SCENE_DATA_PREFIX']}about-to-train/"
    upload(s3, make_synthetic(tmp_path / "d", 1, size=32, seed=8, classes=("sea", "forest")), data)
    waiting = run_deployment("train-all/default", parameters={"data": data}, timeout=0)
    try:
        cli = [str(Path(sys.executable).with_name("scene")), "events", "reconcile", "--bucket", bucket]
        done = subprocess.run(cli, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout) == {"announced": [], "skipped": [data], "backoff": {}, "failed": {}}
        settled(still=3.0)
        assert wait_runs(1, data, timeout=1) == []  # no retrain for it
    finally:
        with get_client(sync_client=True) as client:
            client.delete_flow_run(waiting.id)
