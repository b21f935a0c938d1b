"""Run a flow in a thread while ``scene runs watch`` follows it from another process, as a person would."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCENE = str(Path(sys.executable).with_name("scene"))


def _newest_run(flow_name: str, since: float, timeout: float = 120.0) -> str:
    """The id of the first ``flow_name`` run created after ``since`` (epoch seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                         sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=5)
            fresh = [r for r in runs if r.created and r.created.timestamp() >= since and r.parent_task_run_id is None]
            if fresh:
                return str(fresh[0].id)
            time.sleep(0.5)
    raise AssertionError(f"no {flow_name} flow run appeared within {timeout} s")


def run_watched(start: Callable[[], Any], flow_name: str = "train-all") -> tuple[Any, str, subprocess.CompletedProcess]:
    """Run ``start()`` (a flow call returning its state) in a thread; watch its run with the CLI until it ends.

    Returns (the flow's state, its run id, the finished ``scene runs watch`` process with its stdout).
    """
    since = time.time() - 1
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["state"] = start()
        except BaseException as err:  # re-raised in the test's thread
            box["error"] = err

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True)
    thread.start()
    run_id = _newest_run(flow_name, since)
    watched = subprocess.run([SCENE, "runs", "watch", run_id, "--interval", "1", "--timeout", "900"],
                             env=dict(os.environ), capture_output=True, text=True, timeout=960, check=False)
    thread.join(timeout=900)
    if "error" in box:
        raise box["error"]
    return box["state"], run_id, watched


def backbone_lines(output: str, backbone: str) -> list[str]:
    """The lines of the watch output about ``backbone`` (before the comparison table)."""
    live = output.split("\n\n", 1)[0]
    return [line for line in live.splitlines() if line.split(" ", 1)[0] == backbone]
