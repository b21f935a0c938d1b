"""Processes the tests start."""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> int:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session=True``); SIGKILL it after
    ``grace`` seconds (a Prefect worker finishing its shutdown on a loaded machine can take longer); its exit code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.wait()
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


def process_of_run(run_id: Any) -> int | None:
    """The pid of the process executing a flow run (the worker sets PREFECT__FLOW_RUN_ID in its environment)."""
    needle = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    return None


@contextlib.contextmanager
def watching(target: Callable[..., None], *args: Any) -> Iterator[dict[str, Any]]:
    """Run ``target(*args, found, stop)`` in a daemon thread (in this context: it talks to the test's Prefect API)
    while the block runs; ``found`` is the dict it fills, ``stop`` an Event set when the block ends (then joined)."""
    found: dict[str, Any] = {}
    stop = threading.Event()
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target, *args, found, stop), daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join(timeout=10)


def kill_first_running(deployment_id: Any, killed: dict[str, Any], stop: threading.Event) -> None:
    """SIGKILL the process of the first run of a deployment seen Running (as it starts, before it has done any work);
    ``killed``: its run id, name and pid. A :func:`watching` target."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        while not stop.is_set():
            for run in client.read_flow_runs(deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[deployment_id]))):
                if run.state and run.state.is_running() and (pid := process_of_run(run.id)):
                    os.kill(pid, signal.SIGKILL)
                    killed.update(run=run.id, name=run.name, pid=pid)
                    return
            time.sleep(0.1)
