"""Fixtures for tests against the real local stack (S3 gateway + Prefect server + workers).

ONE stack per package (per pytest-xdist worker): started in a temporary state folder on free ports when the first
test here needs it, with a tiny HTTP listener as its bucket-notification webhook, and stopped after the last test
here (in one process it is never up beside the unit tests or the event stack of tests/events). Each module runs with
this process pointed at the stack (``env``, autouse, entered and left per module). Set
``SCENE_TEST_REUSE_STACK=<state_dir>`` to run the tests against an already running stack instead (tests that need the
test webhook or restart the stack are then skipped).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from scene.ops import stack as stack_mod
from scene.ops.stack import StackInfo
from tests.support import REPO
from tests.support.ports import free_port
from tests.support.s3io import client_from_env
from tests.support.stackenv import env_of, stack_environ
from tests.support.webhook import WEBHOOK_TOKEN, WebhookListener

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

@pytest.fixture(scope="package")
def webhook_listener() -> Iterator[WebhookListener]:
    listener = WebhookListener()
    yield listener
    listener.close()


@pytest.fixture(scope="package")
def stack_args(
    tmp_path_factory: pytest.TempPathFactory, webhook_listener: WebhookListener
) -> dict[str, Any] | None:
    """The keyword arguments the package stack was started with (None when reusing a running stack)."""
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


@pytest.fixture(scope="package")
def stack(stack_args: dict[str, Any] | None) -> Iterator[StackInfo]:
    """A running local stack for this package."""
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


@pytest.fixture(scope="module", autouse=True)
def env(stack: Any) -> Iterator[dict[str, str]]:
    """Point this process (boto3, Prefect client, scene settings) at the test stack for one module."""
    values = env_of(stack.state_dir, folders=True)
    with stack_environ(values):
        yield values


@pytest.fixture(scope="module")
def s3(env: dict[str, str]) -> Any:
    """An S3 client for the package's stack (the module's environment)."""
    return client_from_env()


@pytest.fixture(scope="module")
def settings(stack: StackInfo) -> Any:
    """The stack's settings (endpoint, root credentials, buckets), as ``scene`` reads them from its state folder."""
    return stack_mod.settings_for(stack.state_dir)
