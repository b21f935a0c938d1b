"""The event bridge against the real stack: Prefect accepts its events, the JuiceFS gateway's webhook feeds it,
the gateway's queue covers a bridge that is down, and the polling sensor flow emits only on change.

The bridge tests run a second, gateway-only S3 server (its webhook pointed at the bridge) next to the
session stack, and send events to the session stack's Prefect server.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scene.data.storage import s3_client
from scene.ops import bridge, notifications, prefect_events, services, supervisor
from scene.ops import stack as stack_mod
from scene.ops.bridge import BridgeServer
from scene.ops.notifications import BridgeConfig
from scene.ops.stack import StackInfo
from scene.settings import Settings
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

QUIET = 1.0
BUCKET = "scene-data"


def wait_events(api: str, resource_id: str, n: int = 1, timeout: float = 30.0) -> list[dict]:
    """Poll Prefect until at least ``n`` events of ``resource_id`` are readable; return them."""
    start = time.monotonic()
    while True:
        found = [e for e in prefect_events.read_events(api, resource_prefix=resource_id)
                 if e["resource"]["prefect.resource.id"] == resource_id]
        if len(found) >= n:
            return found
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{len(found)} of {n} events for {resource_id} readable after {timeout}s")
        time.sleep(0.1)


def resource(root: str, bucket: str = BUCKET) -> str:
    return f"scene.dataset.{bucket}/{root}"


def test_emit_prefect_event_is_readable(stack: StackInfo) -> None:
    rid = f"scene.dataset.test/{uuid.uuid4().hex}/"
    cfg = notifications.polling_config("test", "datasets/")
    event = prefect_events.dataset_event(cfg, "test", "datasets/x/", ["datasets/x/a.jpg"])
    event["resource"]["prefect.resource.id"] = rid
    sent = time.monotonic()
    prefect_events.emit_prefect_event(stack.prefect_api_url, event)
    (got,) = wait_events(stack.prefect_api_url, rid)
    print(f"emit → readable via /events/filter: {time.monotonic() - sent:.2f}s")
    assert got["event"] == "scene.data.arrived" and got["id"] == event["id"]
    assert got["payload"] == event["payload"]
    assert got["resource"]["scene.prefix"] == "datasets/x/"
    with pytest.raises(prefect_events.EmitError, match="answered 422"):
        prefect_events.emit_prefect_event(stack.prefect_api_url,
                                  {"event": "x" * 2000, "resource": {"prefect.resource.id": "y"}})


# ------------------------------------------------------------------------------ a gateway for the bridge


@dataclass
class Rig:
    """The bridge (restartable on its port) and an S3 gateway whose webhook points at it."""

    cfg: BridgeConfig
    port: int
    s3: Any
    server: BridgeServer | None = None

    def start(self) -> BridgeServer:
        self.server = bridge.serve(self.cfg, port=self.port)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def put(self, key: str, data: bytes = b"\xff\xd8 not really a jpeg") -> float:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        return time.monotonic()


def _start_gateway(state: Path, port: int, url: str, token: str) -> None:
    """Only the S3 gateway of a stack, with bucket notifications to ``url`` (starts in well under a second)."""
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds = stack_mod._credentials(state, create=True)
    pid = services.start_gateway(state, port, creds, {"url": url, "token": "test"}, token)
    supervisor.wait_healthy(state, stack_mod.S3, pid, lambda: services.s3_healthy(port), 60, f"S3 gateway on {port}")


@pytest.fixture(scope="module")
def rig(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    token = secrets.token_urlsafe(24)
    state = tmp_path_factory.mktemp("events-gw") / "state"
    s3_port, port = free_port(), free_port()
    cfg = BridgeConfig(token=token, bucket=BUCKET, prefix="datasets/", quiet_seconds=QUIET,
                       prefect_api_url=stack.prefect_api_url)
    r = Rig(cfg=cfg, port=port, s3=None)
    r.start()
    try:
        _start_gateway(state, s3_port, f"http://127.0.0.1:{port}/notify", token)
        creds = stack_mod._credentials(state)
        r.s3 = s3_client(Settings(s3_endpoint_url=f"http://127.0.0.1:{s3_port}", aws_access_key_id=creds["access_key"],
                                  aws_secret_access_key=creds["secret_key"]))
        r.s3.create_bucket(Bucket=BUCKET)
        stack_mod.configure_bucket_notification(r.s3, BUCKET, "datasets/", (".jpg", ".png", "_READY"))
        yield r
    finally:
        r.stop()
        stack_mod.down(state)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def test_burst_of_uploads_becomes_one_event(rig: Rig, stack: StackInfo) -> None:
    assert rig.server is not None
    root = f"datasets/burst-{uuid.uuid4().hex[:8]}/"
    before = rig.server.stats()
    for i in range(5):
        last = rig.put(f"{root}seg_train/sea/{i}.jpg")
    rig.put(f"{root}notes.txt")  # outside the suffix rules: the gateway sends nothing
    (got,) = wait_events(stack.prefect_api_url, resource(root))
    latency = time.monotonic() - last
    print(f"last of 5 puts → event readable in Prefect: {latency:.2f}s (quiet period {QUIET}s)")
    payload = got["payload"]
    assert payload["count"] == 5 and payload["data"] == f"s3://{BUCKET}/{root}"
    assert sorted(payload["keys"]) == [f"{root}seg_train/sea/{i}.jpg" for i in range(5)]
    time.sleep(QUIET + 1.5)  # nothing more arrives for this root
    found = wait_events(stack.prefect_api_url, resource(root))
    assert len(found) == 1, found
    after = rig.server.stats()
    assert after["objects"] - before["objects"] == 5 and after["emitted"] - before["emitted"] == 1
    assert after["rejected"] == before["rejected"]


def test_gateway_keys_with_spaces_and_plus_arrive_decoded_once(rig: Rig, stack: StackInfo) -> None:
    """The gateway form-encodes keys in Records (space → '+', '+' → '%2B'); the bridge decodes them exactly once."""
    root = f"datasets/my set {uuid.uuid4().hex[:8]}/"
    keys = [f"{root}sea/a+b c.jpg", f"{root}sea/100% ü.jpg"]
    for key in keys:
        rig.put(key)
    rig.put(f"{root}_READY", b"")
    (got,) = wait_events(stack.prefect_api_url, resource(root))
    assert sorted(got["payload"]["keys"]) == sorted(keys) and got["payload"]["prefix"] == root
    assert all(rig.s3.head_object(Bucket=BUCKET, Key=k) for k in got["payload"]["keys"])


def test_ready_marker_emits_without_waiting(rig: Rig, stack: StackInfo) -> None:
    assert rig.server is not None
    server = rig.server
    root = f"datasets/ready-{uuid.uuid4().hex[:8]}/"
    rig.put(f"{root}a/1.jpg")
    rig.put(f"{root}a/2.png")
    emitted = server.stats()["emitted"]
    marker = rig.put(f"{root}_READY", b"")
    wait_for(lambda: server.stats()["emitted"] > emitted, 10, "emission after the marker")
    accepted = time.monotonic() - marker
    (got,) = wait_events(stack.prefect_api_url, resource(root))
    print(f"_READY put → event accepted by Prefect: {accepted:.2f}s, readable via /events/filter: "
          f"{time.monotonic() - marker:.2f}s")
    assert got["payload"]["count"] == 2 and got["payload"]["reason"] == "ready marker"


def test_events_sent_while_the_bridge_is_down_arrive_later(rig: Rig, stack: StackInfo) -> None:
    root = f"datasets/down-{uuid.uuid4().hex[:8]}/"
    rig.stop()
    try:
        for i in range(3):
            rig.put(f"{root}x/{i}.jpg")
        time.sleep(1.0)
        assert prefect_events.read_events(stack.prefect_api_url, resource_prefix=resource(root)) == []
    finally:
        back = time.monotonic()
        server = rig.start()
    wait_for(lambda: server.stats()["objects"] >= 3, 60, "queued notifications delivered to the restarted bridge")
    print(f"queued notifications replayed {time.monotonic() - back:.2f}s after the bridge came back")
    found = wait_events(stack.prefect_api_url, resource(root))
    assert len(found) == 1 and found[0]["payload"]["count"] == 3


# ------------------------------------------------------------------------------------ the polling sensor


def test_watch_flow_emits_for_new_objects_only(env: dict[str, str], s3: Any, stack: StackInfo) -> None:
    from flows.watch import watch

    uid = uuid.uuid4().hex[:8]
    prefix = f"watch-{uid}/"
    uri = f"s3://{BUCKET}/{prefix}"
    state_key = f"sensors/test-{uid}.json"
    for name in ("a/sea/1.jpg", "a/sea/2.jpg", "a/notes.txt"):
        s3.put_object(Bucket=BUCKET, Key=prefix + name, Body=name.encode())

    first = watch(prefix_uri=uri, state_key=state_key)
    assert first["first_run"] and first["objects"] == 2 and first["emitted"] == [f"{uri}a/"]
    (ev,) = wait_events(stack.prefect_api_url, resource(f"{prefix}a/"))
    assert ev["payload"]["count"] == 2 and ev["payload"]["data"] == f"{uri}a/"
    assert s3.head_object(Bucket=os.environ["SCENE_ARTIFACT_BUCKET"], Key=state_key)

    again = watch(prefix_uri=uri, state_key=state_key)
    assert not again["first_run"] and again["emitted"] == [] and (again["new"], again["changed"]) == (0, 0)

    s3.put_object(Bucket=BUCKET, Key=prefix + "a/sea/2.jpg", Body=b"changed content")
    s3.put_object(Bucket=BUCKET, Key=prefix + "b/x/1.png", Body=b"new")
    third = watch(prefix_uri=uri, state_key=state_key)
    assert sorted(third["emitted"]) == [f"{uri}a/", f"{uri}b/"] and (third["new"], third["changed"]) == (1, 1)
    found_a = wait_events(stack.prefect_api_url, resource(f"{prefix}a/"), n=2)
    assert sorted(e["payload"]["count"] for e in found_a) == [1, 2]
    (ev_b,) = wait_events(stack.prefect_api_url, resource(f"{prefix}b/"))
    assert ev_b["payload"]["keys"] == [f"{prefix}b/x/1.png"]
    time.sleep(1.0)
    assert len(prefect_events.read_events(stack.prefect_api_url, resource_prefix=resource(prefix))) == 3
