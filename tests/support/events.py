"""The event stack's settings and the queries its tests share (retrain runs created by the trigger)."""

from __future__ import annotations

import time
from typing import Any

QUIET = 5.0  # the bridge's quiet period; the gateway delivers a burst as a steady stream ~45 ms apart
EXTRA = {"SCENE_EVENTS_CONFIRM_AFTER": "15"}  # the bridge re-sends an event whose run did not appear after 15 s


def retrain_runs() -> list[Any]:
    """Every flow run of the retrain deployment but those its weekly schedule made (the scheduler adds them at
    its own pace after ``prefect deploy``; counting them made counts jump by 3 mid-test) — the Prefect API of the
    entered stack environment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["default"])))
        return [r for r in runs if not r.auto_scheduled
                and client.read_deployment(r.deployment_id).entrypoint.startswith("flows/retrain.py")]


def wait_runs(n: int, data: str, timeout: float = 90.0) -> list[Any]:
    """The retrain runs for ``data`` once there are ``n`` of them (or all there are after ``timeout``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = [r for r in retrain_runs() if r.parameters.get("data") == data]
        if len(runs) >= n:
            return runs
        time.sleep(0.5)
    return [r for r in retrain_runs() if r.parameters.get("data") == data]


def settled(still: float = 5.0, timeout: float = 40.0) -> int:
    """The number of retrain runs once it stopped changing for ``still`` seconds."""
    deadline, count, since = time.time() + timeout, len(retrain_runs()), time.time()
    while time.time() < deadline and time.time() - since < still:
        time.sleep(0.5)
        now = len(retrain_runs())
        if now != count:
            count, since = now, time.time()
    return count


def bridge(stack: dict[str, Any]) -> dict[str, Any]:
    """The event stack's bridge counters (``/health`` with its token): objects, ignored, emitted, pending, ..."""
    import json

    from scene.ops.prefect_events import bridge_stats

    cfg = json.loads((stack["state"] / "stack.json").read_text())
    token = json.loads((stack["state"] / "credentials.json").read_text())["events_token"]
    return bridge_stats(f"http://127.0.0.1:{cfg['events_port']}", token)


def drained(stack: dict[str, Any], before: dict[str, Any], *, objects: int = 0, ignored: int = 0,
            timeout: float = 90.0) -> dict[str, Any]:
    """The bridge's counters once it has counted ``objects`` more objects and ``ignored`` more ignored keys than in
    ``before`` and holds no pending batch (every batch emitted: what the gateway delivered is all accounted for)."""
    from tests.support.polling import eventually

    def done() -> dict[str, Any] | None:
        now = bridge(stack)
        grown = (now["objects"] - before["objects"], now["ignored"] - before["ignored"])
        return now if grown[0] >= objects and grown[1] >= ignored and now["pending"] == 0 else None

    now = eventually(done, timeout, f"the bridge counting {objects} objects and {ignored} ignored keys, none pending")
    assert (now["objects"] - before["objects"], now["ignored"] - before["ignored"]) == (objects, ignored), (before, now)
    return now
