"""The event stack, ONE per package: the event bridge, prefect.yaml deployed, the work pools paused.

Shared by every module here (the trigger, storms, delivery faults, per-dataset slots, security probes); started
when the first of them runs and stopped after the last (under pytest-xdist the package runs whole on one worker).
Triggered retrain runs are created (what the trigger does) but not executed.
``event_stack`` leaves ``os.environ`` alone; ``estack`` enters the stack's environment for one module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import REPO
from tests.support.events import EXTRA, QUIET
from tests.support.ports import free_port
from tests.support.runs import prefect_deploy
from tests.support.stackenv import env_of, stack_environ


@pytest.fixture(scope="package")
def event_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A stack with the event bridge, deployments from prefect.yaml, and the work pools paused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from scene.data import storage
    from scene.ops import stack as stack_mod
    from scene.settings import Settings

    state = tmp_path_factory.mktemp("estack") / "state"
    info = stack_mod.up(state, s3_port=free_port(), prefect_port=free_port(), pools=("default", "gpu"),
                        workdir=REPO, events_port=free_port(), quiet_seconds=QUIET, extra=EXTRA)
    try:
        env = env_of(state)
        with stack_environ(env):
            prefect_deploy("--all")
            with get_client(sync_client=True) as client:
                for pool in ("default", "gpu"):
                    client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
            s3 = storage.s3_client(Settings.from_env())
        yield {"info": info, "state": state, "env": env, "s3": s3}
    finally:
        stack_mod.down(state)


@pytest.fixture(scope="module")
def estack(event_stack: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The package's event stack, with this process pointed at it for the module."""
    with stack_environ(event_stack["env"]):
        yield event_stack
