"""A pytest plugin (tests/conftest.py loads it): ONE stack with the event bridge and prefect.yaml deployed, shared
by tests/integration/test_retrain_trigger.py and tests/faults/test_event_storm.py (started once per session).

The `default` and `gpu` work pools are paused, so triggered retrain runs are created (what the trigger does) but
not executed. ``event_stack`` leaves ``os.environ`` alone; ``stack_environ`` points this process at the stack
for as long as it is entered.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
QUIET = 5.0  # the bridge's quiet period; the gateway delivers a burst as a steady stream ~45 ms apart
EXTRA = {"SCENE_EVENTS_CONFIRM_AFTER": "15"}  # the bridge re-sends an event whose run did not appear after 15 s


def api_settings(env: dict[str, str]) -> dict[Any, Any]:
    """Prefect's API URL and auth string of a stack, for ``temporary_settings(updates=...)``.

    A switch between stacks must set both: settings this process already holds win over the environment, so an
    auth string read for one stack would otherwise be sent to the next (401)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    return {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env.get("PREFECT_API_AUTH_STRING")}


@contextlib.contextmanager
def stack_environ(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` and Prefect's API URL and auth string pointed at the stack, restored on exit."""
    from prefect.settings import temporary_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with temporary_settings(updates=api_settings(env)):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def event_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack with the event bridge, deployments from prefect.yaml, and the work pools paused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from scene.data import storage
    from scene.ops import stack as stack_mod
    from scene.settings import Settings
    from tests.integration.conftest import free_port

    state = tmp_path_factory.mktemp("estack") / "state"
    info = stack_mod.up(state, s3_port=free_port(), prefect_port=free_port(), pools=("default", "gpu"),
                        workdir=REPO, events_port=free_port(), quiet_seconds=QUIET, extra=EXTRA)
    try:
        env = dict(line.removeprefix("export ").split("=", 1) for line in stack_mod.env_lines(state))
        env = {k: v.strip("'\"") for k, v in env.items()}
        with stack_environ(env):
            deploy = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--all"],
                                    cwd=REPO, env={**os.environ, "SCENE_REPO_DIR": str(REPO)}, capture_output=True,
                                    text=True, timeout=300, check=False)
            assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
            with get_client(sync_client=True) as client:
                for pool in ("default", "gpu"):
                    client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
            s3 = storage.s3_client(Settings.from_env())
        yield {"info": info, "state": state, "env": env, "s3": s3}
    finally:
        stack_mod.down(state)


def retrain_runs() -> list[Any]:
    """Every flow run of the retrain deployment (the Prefect API of the entered :func:`stack_environ`)."""
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
