"""No orphan holds a slot: runs of the stack's process workers are ended when the stack stops, and runs left
Running whose process is gone are crashed when it starts.

A process worker records the flow run's process id in ``FlowRun.infrastructure_pid`` (Prefect 3.9: the pid;
older workers: ``hostname:pid``). ``scene stack down`` stops the workers, ends those processes and marks their
runs Crashed with the reason (:func:`end_owned_runs`). ``scene stack up`` marks Crashed every Running, Pending or
Cancelling run of the stack's pools whose local process (a numeric pid; container runs are left alone) no longer
exists (:func:`crash_orphans`): after a machine restart, a ``kill -9`` of the stack, or a stop whose Prefect server
was already gone. Without this such a run stays Running forever (the zombie automation's deadline passed while
the server was down, and a proactive trigger does not fire for it afterwards), and the retrain duplicate check
would keep deferring to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from datetime import datetime
from typing import Any

from scene.ops import prefect_api

log = logging.getLogger("scene.stack")
LIVE = ["RUNNING", "PENDING", "CANCELLING"]


def _pid(run: dict[str, Any]) -> int | None:
    """The local process id of a run's ``infrastructure_pid`` (None: none, or another host's)."""
    text = str(run.get("infrastructure_pid") or "")
    host, _, pid = text.rpartition(":")
    if not pid.isdigit() or (host and host != socket.gethostname()):
        return None
    return int(pid)


def _started(pid: int) -> float | None:
    """When a local process started (epoch seconds), None when it does not exist."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115 (procfs, tiny)
        boot = next(float(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))  # noqa: SIM115
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0


def alive(run: dict[str, Any]) -> bool:
    """Whether the run's process still exists (and is not a newer process that reused its pid)."""
    pid = _pid(run)
    if pid is None:
        return False
    started = _started(pid)
    if started is None:
        return False
    began = run.get("start_time") or run.get("created")
    if began and started:
        with contextlib.suppress(ValueError):
            if started > datetime.fromisoformat(str(began).replace("Z", "+00:00")).timestamp() + 120:
                return False  # the pid was reused by a process started well after the run
    return True


def live_runs(api: str, pools: list[str]) -> list[dict[str, Any]]:
    """Runs of the given work pools that are Running, Pending or Cancelling (the REST API's JSON)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    try:
        with prefect_api.client(api, timeout=10) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=LIVE))),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=pools)), limit=200)
    except Exception as err:  # httpx errors: unreachable, or an error status
        raise RuntimeError(f"Prefect API {api}: reading the live runs of pools {pools} failed: {err}") from err
    return [r.model_dump(mode="json") for r in runs]


def crash(api: str, run: dict[str, Any], reason: str) -> bool:
    """Force the run's state to Crashed with ``reason``; whether the server took it."""
    from prefect.states import Crashed

    try:
        with prefect_api.client(api, timeout=10) as client:
            result = client.set_flow_run_state(run["id"], Crashed(message=reason), force=True)
        ok = result.status.value == "ACCEPT"
    except Exception as err:  # httpx errors: unreachable, or an error status
        log.debug("setting flow run %s Crashed failed: %s", run["id"], err)
        ok = False
    log.warning("%s flow run %s (%s): %s", "crashed" if ok else "could not crash", run.get("name"), run["id"],
                reason)
    return ok


def crash_orphans(api: str, pools: list[str]) -> list[str]:
    """Crash the live runs of ``pools`` whose process is gone (at stack start); their names."""
    done = []
    for run in live_runs(api, pools):
        if _pid(run) is None:
            continue  # no local process recorded (not started yet, or a container / another host): not ours to judge
        if not alive(run):
            pid = run.get("infrastructure_pid") or "none recorded"
            if crash(api, run, f"its process ({pid}) is gone: the stack was stopped or the machine restarted "
                               "while it ran (found at scene stack up)"):
                done.append(str(run.get("name")))
    return done


def owned_runs(api: str, pools: list[str]) -> list[dict[str, Any]]:
    """The live runs of ``pools`` whose process runs on this host (before stopping the stack's workers)."""
    return [r for r in live_runs(api, pools) if _pid(r) is not None]


def end_owned_runs(api: str, runs: list[dict[str, Any]], grace: float = 10.0) -> list[str]:
    """After the workers stopped: end the runs' processes still alive (SIGTERM, then SIGKILL after ``grace``) and
    mark the runs Crashed with the reason; their names."""
    pids = {r["id"]: _pid(r) for r in runs}
    for run in runs:
        pid = pids[run["id"]]
        if pid is not None and alive(run):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(r) for r in runs):
        time.sleep(0.2)
    for run in runs:
        pid = pids[run["id"]]
        if pid is not None and alive(run):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    still = {r["id"] for r in live_runs(api, sorted({str(r.get("work_pool_name")) for r in runs}))} if runs else set()
    done = []
    for run in runs:
        reason = ("scene stack down stopped the worker running it and ended its process "
                  f"({run.get('infrastructure_pid')})")
        if run["id"] in still and crash(api, run, reason):
            done.append(str(run.get("name")))
    return done
