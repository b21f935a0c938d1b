"""Local dispatch: each backbone's ``train-backbone`` subflow in a process of its own.

One backbone that runs out of memory (the kernel's OOM killer sends SIGKILL), segfaults in a native library or
raises, takes only its own process down: the others keep training, its row in the table says what happened, and
its flow run is marked Crashed (a killed process cannot report that itself). The child is started with Prefect's
``run_flow_in_subprocess`` from the parent's context, so it is a subflow of the parent run in the UI; a unique tag
finds its flow run again. Results come back through ``result.json`` beside the backbone's artifacts in S3.
"""

from __future__ import annotations

import contextvars
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow_in_subprocess
from prefect.runtime import flow_run as this_run
from prefect.states import Crashed

from flows.train_backbone import train_backbone
from scene.train.experiment import TrainResult
from tasks import artifacts

# the flow travels to the child by value (cloudpickle), without the module globals its annotations name: the
# parameters are already typed objects, so the child skips re-validating them
_CHILD_FLOW = train_backbone.with_options(validate_parameters=False)
# each process allocates accelerator memory as it needs it (TensorFlow's default takes all of it, for one process)
CHILD_ENV = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def how_it_ended(pid: int, exitcode: int | None) -> str:
    """``"the process (pid 12) was killed by SIGKILL …"``: what a dead child's exit code says."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
        oom = -exitcode == signal.SIGKILL
        hint = " (the kernel's out-of-memory killer sends SIGKILL: check `dmesg`)" if oom else ""
        return f"its process (pid {pid}) was killed by {name}{hint}"
    return f"its process (pid {pid}) exited with status {exitcode}"


def _child_run(tag: str) -> FlowRun | None:
    """The subflow run the child created (found by its unique tag), or None if it died before creating one."""
    parent = this_run.get_id()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[tag]),
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]) if parent else None))
    return runs[0] if runs else None


def _mark_crashed(run: FlowRun, message: str) -> None:
    """A run whose process died: Crashed, with the reason (and the parent's placeholder task run too)."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
        if run.parent_task_run_id:
            client.set_task_run_state(run.parent_task_run_id, Crashed(message=message), force=True)


def train_in_process(backbone: str, run_args: dict[str, Any]) -> TrainResult:
    """Train one backbone in a child process and wait; a failure of any kind becomes a ``failed`` row.

    The child gets the published manifest by URI (``run_args["manifest_uri"]``), as a dispatched run does: nothing
    large travels in its parameters."""
    log = get_run_logger()
    params = run_args["params"]
    tag = f"scene-process-{uuid.uuid4().hex[:12]}"
    with tags(f"backbone:{backbone}", tag):  # serialized into the child's context: its subflow run carries them
        proc = run_flow_in_subprocess(_CHILD_FLOW, parameters={"backbone": backbone, **run_args},
                                      env=CHILD_ENV)
    log.info("%s: training in process %d", backbone, proc.pid)
    proc.join()
    run = _child_run(tag)
    state = run.state if run is not None else None
    if state is not None and state.is_completed():
        res = artifacts.read_result(f"{run_args['run_prefix_uri'].rstrip('/')}/{backbone}/")
        if res is not None:
            return res
        error = f"flow run {run.id} completed without a result.json"
    elif proc.exitcode != 0 and (state is None or not state.is_final()):
        error = f"{backbone}: {how_it_ended(proc.pid, proc.exitcode)}"
        if run is not None:
            _mark_crashed(run, error)
            error += f"; flow run {run.id} marked Crashed"
    else:
        error = state.message if state is not None else f"{backbone}: {how_it_ended(proc.pid, proc.exitcode)}"
    log.error("%s failed: %s", backbone, error)
    return TrainResult(backbone, "failed", error, strategy=params.strategy, weights=params.weights)


def train_in_processes(backbones: list[str], run_args: dict[str, Any], slots: int) -> list[TrainResult]:
    """Every backbone in its own process, at most ``slots`` at once; results in the order of ``backbones``."""
    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="backbone") as pool:
        futures = [pool.submit(contextvars.copy_context().run, train_in_process, b, run_args) for b in backbones]
        return [f.result() for f in futures]
