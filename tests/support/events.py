"""The event stack's settings and the queries its tests share (retrain runs created by the trigger)."""

from __future__ import annotations

import time
from typing import Any

QUIET = 5.0  # the bridge's quiet period; the gateway delivers a burst as a steady stream ~45 ms apart
EXTRA = {"SCENE_EVENTS_CONFIRM_AFTER": "15"}  # the bridge re-sends an event whose run did not appear after 15 s


def retrain_runs() -> list[Any]:
    """Every flow run of the retrain deployment (the Prefect API of the entered stack environment)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["default"])))
        return [r for r in runs if client.read_deployment(r.deployment_id).entrypoint.startswith("flows/retrain.py")]


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
