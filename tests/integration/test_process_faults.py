"""Process faults on the real stack (issue 10, scenarios 1 and 3): SIGKILL of a flow run's process during feature
extraction, SIGKILL of the Prefect server (idle, and with a run in flight); and the heartbeat + zombie-run automation
`scene stack up` sets up for a worker that dies with its runs.

Here (not in tests/faults/) to share the session stack of tests/integration/conftest.py."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect import flow

from scene.data import storage
from scene.data.synth import make_synthetic
from scene.ops import prefect_api
from scene.ops import stack as stack_mod
from scene.ops.services import HEARTBEAT_S, ZOMBIE_AFTER_S, ZOMBIE_AUTOMATION
from tests.support import REPO
from tests.support.procs import process_of_run
from tests.support.runs import deploy_on_default_pool, wait_final
from tests.support.s3io import upload

pytestmark = [pytest.mark.integration, pytest.mark.faults]
DEPLOYMENT = "process-faults"
PARAMS = {"weights": "none", "epochs": 1, "views": 1, "image_size": 48, "backbones": ["mobilenetv2"]}


@pytest.fixture(scope="module")
def dataset(s3: Any, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    root = make_synthetic(tmp_path_factory.mktemp("d") / "kills", 8, size=48, seed=31)
    return upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}faults-kills/")


@pytest.fixture(scope="module")
def deployment(env: dict[str, str]) -> str:
    """A train-backbone deployment on the `default` pool (the session stack's process worker runs it)."""
    return deploy_on_default_pool("train-backbone", "flows/train_backbone.py:train_backbone", DEPLOYMENT)


def _start(deployment: str, data: str, cache: Path) -> Any:
    """A flow run of ``deployment`` with its own feature cache folder (not waited for); its artifacts go to its own
    folder runs/<run id>/ (a run started from outside a flow may choose no other)."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment, timeout=0, parameters={
        "backbone": "mobilenetv2", "data": data, "params": PARAMS},
        job_variables={"env": {"SCENE_FEATURE_CACHE": str(cache)}})


def _wait_final(run_id: Any, timeout: float = 300.0) -> Any:
    return wait_final([run_id], timeout)[run_id]


def _shards(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("shard-*.npz"))


def _result(run_id: Any, s3: Any) -> dict[str, Any]:
    prefix = f"s3://{os.environ['SCENE_ARTIFACT_BUCKET']}/runs/{run_id}/"
    return json.loads(storage.read_bytes(f"{prefix}mobilenetv2/result.json", s3))


def test_sigkill_during_extraction_crashes_the_run_and_a_rerun_reuses_every_shard(
        dataset: str, deployment: str, s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    """Scenario 1: the killed run ends Crashed; the rerun computes only what no shard holds; same metrics."""
    baseline = _start(deployment, dataset, tmp_path / "cache-a")
    cache = tmp_path / "cache-b"
    victim = _start(deployment, dataset, cache)
    deadline, pid = time.monotonic() + 240, None
    while time.monotonic() < deadline and not _shards(cache):  # the first shard (train, plain view) is written
        time.sleep(0.01)
    pid = process_of_run(victim.id)
    assert _shards(cache) and pid is not None, f"no shard written by flow run {victim.id} (pid {pid})"
    os.kill(pid, signal.SIGKILL)
    killed = _wait_final(victim.id, timeout=60)
    assert killed.state.is_crashed(), killed.state
    kept = sum(len(np.load(p)["keys"]) for p in _shards(cache))
    rerun = _start(deployment, dataset, cache)
    for run in (baseline, rerun):
        assert _wait_final(run.id).state.is_completed(), run.id
    first, second = _result(baseline.id, s3), _result(rerun.id, s3)
    requested = first["features_computed"]
    assert first["features_cached"] == 0 and 0 < kept < requested, (kept, first)
    assert (second["features_cached"], second["features_computed"]) == (kept, requested - kept), second
    for split in ("train", "val", "test"):
        for name in ("accuracy", "f1_weighted", "f1_macro"):
            assert second["metrics"][split][name] == pytest.approx(first["metrics"][split][name], abs=1e-9), split


def _automations(api: str) -> list[dict[str, Any]]:
    status, found = prefect_api.request("POST", api, "/automations/filter",
                                        {"automations": {"name": {"any_": [ZOMBIE_AUTOMATION]}}})
    assert status == 200, found
    return found


def test_stack_up_sets_up_heartbeats_and_one_zombie_automation(stack: Any, stack_args: dict[str, Any] | None) -> None:
    """Workers (so their flow runs) heartbeat; one automation marks a silent run Crashed, kept by up()."""
    (auto,) = _automations(stack.prefect_api_url)
    trigger = auto["trigger"]
    assert trigger["posture"] == "Proactive" and trigger["after"] == ["prefect.flow-run.heartbeat"], trigger
    assert trigger["within"] == ZOMBIE_AFTER_S and trigger["for_each"] == ["prefect.resource.id"], trigger
    assert auto["actions"][0]["state"] == "CRASHED" and auto["enabled"], auto
    worker = stack.pids["worker-default"]
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    assert f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={HEARTBEAT_S}".encode() in environ
    assert f"PREFECT_WORKER_QUERY_SECONDS={stack_mod.WORKER_POLL_S}".encode() in environ
    if stack_args is not None:
        stack_mod.up(**stack_args)
        assert [a["id"] for a in _automations(stack.prefect_api_url)] == [auto["id"]]


def test_prefect_server_sigkill_then_up_restarts_only_it_and_keeps_history(
        stack: Any, stack_args: dict[str, Any] | None, env: dict[str, str]) -> None:
    """Scenario 3: `scene stack up` after the server died restarts the server alone; earlier runs are still listed."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    if stack_args is None:
        pytest.skip("reusing a running stack: not killing someone else's Prefect server")

    @flow(name="before-the-crash")
    def before() -> int:
        return 1

    state = before(return_state=True)
    run_id = state.state_details.flow_run_id
    pids = _kill_prefect_server(stack)
    info = stack_mod.up(**stack_args)
    assert info.pids["prefect"] != pids["prefect"]
    assert {k: v for k, v in info.pids.items() if k != "prefect"} == {k: v for k, v in pids.items() if k != "prefect"}
    assert stack_mod.status(stack.state_dir)["healthy"]
    with get_client(sync_client=True) as client:
        kept = client.read_flow_run(run_id)
    assert kept.state.is_completed(), kept.state
    assert len(_automations(stack.prefect_api_url)) == 1


@flow(name="process-faults-ping")
def ping() -> int:
    """A flow for the session stack's `default` worker that only proves it still takes runs (no TensorFlow)."""
    return os.getpid()


def _kill_prefect_server(stack: Any) -> dict[str, int]:
    """SIGKILL the Prefect server's process group and wait until the stack sees it gone; the pids before."""
    pids = stack_mod.info(stack.state_dir).pids
    os.killpg(pids["prefect"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stack_mod.status(stack.state_dir)["services"]["prefect"]["running"]:
        time.sleep(0.2)
    assert not stack_mod.status(stack.state_dir)["services"]["prefect"]["running"]
    return pids


def _task_states(run_id: Any, timeout: float = 30.0) -> set[str]:
    """The state types of a flow run's task runs, once every one is final (the server records them from events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline, states = time.monotonic() + timeout, set()
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            states = {r.state.type.value if r.state else "NONE" for r in runs}
            if runs and all(r.state is not None and r.state.is_final() for r in runs):
                break
            time.sleep(0.5)
    return states


def test_prefect_server_sigkill_during_a_run_then_up_the_run_completes_and_the_worker_reconnects(
        dataset: str, deployment: str, stack: Any, stack_args: dict[str, Any] | None, s3: Any,
        env: dict[str, str], tmp_path: Path) -> None:
    """Scenario 3 with a run in flight: the server dies during feature extraction and `up()` brings it back.

    The same flow-run process carries on (Prefect's client retries with backoff while the API is gone) and the run
    completes with its result.json in S3; the worker takes a new run after the restart (it reconnected).
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    if stack_args is None:
        pytest.skip("reusing a running stack: not killing someone else's Prefect server")
    ping_deployment = deploy_on_default_pool("process-faults-ping", f"{Path(__file__).relative_to(REPO)}:ping",
                                             DEPLOYMENT)
    cache = tmp_path / "cache"
    victim = _start(deployment, dataset, cache)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not _shards(cache):  # Running, in feature extraction
        time.sleep(0.01)
    pid = process_of_run(victim.id)
    assert _shards(cache) and pid is not None, f"no shard written by flow run {victim.id} (pid {pid})"
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(victim.id).state.is_running()
    pids = {}
    try:
        pids = _kill_prefect_server(stack)
        time.sleep(5)
    finally:
        info = stack_mod.up(**stack_args)  # leaves a healthy stack for the next test whatever happened above
    assert {k: v for k, v in info.pids.items() if k != "prefect"} == {k: v for k, v in pids.items() if k != "prefect"}
    assert process_of_run(victim.id) == pid, "the flow-run process did not outlive the server's restart"
    after = run_deployment(ping_deployment, timeout=0)
    run = _wait_final(victim.id, timeout=240)
    assert run.state.is_completed() and run.run_count == 1, (run.state, run.run_count)
    result = _result(victim.id, s3)
    assert result["backbone"] == "mobilenetv2" and result["features_computed"] > 0, result
    assert _task_states(victim.id) == {"COMPLETED"}  # state events sent while the API was gone were resent
    assert _wait_final(after.id, timeout=120).state.is_completed(), after.id
    assert stack_mod.status(stack.state_dir)["healthy"]


def _api_that_goes_away(version: str) -> Any:
    """A real HTTP server on a free port that answers only Prefect's version check; ``shutdown()`` closes it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(version).encode()
            self.send_response(200 if self.path.endswith("/admin/version") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_progress_while_the_api_is_down_warns_and_the_work_goes_on(env: dict[str, str]) -> None:
    """Past the client's retries (an outage over ~60 s) a progress update fails: the step logs a warning, stops
    sending progress for PROGRESS_PAUSE_S and carries on (before, the error failed the extraction task)."""
    from prefect.client.orchestration import get_client
    from prefect.context import SyncClientContext
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from tasks.common import PROGRESS_PAUSE_S, Progress

    with get_client(sync_client=True) as client:
        api = _api_that_goes_away(client.api_version())

    @flow(name="progress-api-down")
    def work() -> dict[str, float]:
        progress = Progress(min_interval=0)
        progress("features x", 1, 4)  # sent to the live server
        url = f"http://127.0.0.1:{api.server_address[1]}/api"
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}), \
                SyncClientContext(httpx_settings={"timeout": 5.0}):  # the client Prefect's artifact calls use now
            api.shutdown()  # ... and its server is gone: connection refused
            api.server_close()
            progress("features x", 2, 4)  # refused: warned, not raised
            paused = progress.quiet_until - time.monotonic()
            tried: list[str] = []
            send = progress._send
            progress._send = lambda stage, *rest: (tried.append(stage), send(stage, *rest))[1]  # type: ignore[method-assign]
            progress("features x", 3, 4)  # within the pause: not even tried
            return {"paused": paused, "tried": len(tried)}

    state = work(return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert PROGRESS_PAUSE_S - 5 < out["paused"] <= PROGRESS_PAUSE_S and out["tried"] == 0, out
