"""Dispatched training as users run it (issue 20): one ``train-backbone`` flow run per backbone on another work pool.

1. Registered under the data root and gated: ``train-all`` dispatches to the stack's `gpu` process pool, on a
   calibrated (not random-init) MobileNetV2 weights file, twice on the same data with two recipes. The first run's
   version is promoted "no champion yet" for the *data root* (not for ``runs/<id>/manifest.csv/``); the second is
   gated against it: its ``decision.json`` holds the paired counts recomputed here from both versions' stored test
   predictions, and ``scene models list --dataset ROOT`` shows both versions, the champion marked.
2. Followed, not cancelled: more backbones than the pool has slots (a pool with concurrency 1), each training for
   longer than ``start_timeout_s``; one child is sent back to Scheduled mid-run the way Kubernetes' eviction handling
   does it (``prefect flow-run execute`` with ``PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule``, then SIGTERM):
   every child completes and none is cancelled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from scene import registry
from scene.data import storage
from tests.support import REPO
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.procs import stop_group, watching
from tests.support.runs import assert_gated_against, deploy_on_default_pool
from tests.support.s3io import upload

pytestmark = pytest.mark.integration
SIZE = 32


def _params(weights: str, epochs: int, **more: Any) -> dict[str, Any]:
    return {"backbones": ["mobilenetv2"], "weights": weights, "epochs": epochs, "views": 0, "image_size": SIZE,
            "finetune_layers": 0, "mixed_precision": False, **more}


def test_dispatched_versions_register_under_the_data_root_and_are_gated(s3: Any, env: dict[str, str],
                                                                         tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.train_all import train_all

    bucket = env["SCENE_ARTIFACT_BUCKET"]
    deployment = deploy_on_default_pool("train-backbone", "flows/train_backbone.py:train_backbone",
                                        f"gpu-gate-{uuid.uuid4().hex[:6]}", pool="gpu")
    weights = calibrated_mobilenetv2(tmp_path, SIZE)
    data = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}dispatch-{uuid.uuid4().hex[:8]}/"
    upload(s3, draw_hues(tmp_path / "hues", 0, size=SIZE, per_class=12), data)

    runs = []
    for epochs, devices in ((30, None), (45, ["0"])):  # the same data twice, two recipes (so two versions)
        state = train_all(data=data, params=_params(weights, epochs), dispatch="deployments", deployment=deployment,
                          devices=devices, return_state=True)
        assert state.is_completed(), state.message
        runs.append(state.result())
    first, second = runs
    with get_client(sync_client=True) as client:  # the second run's child was pinned to its device
        (child,) = [r for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=
                    FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id]))) if r.deployment_id]
    assert child.job_variables == {"env": {"CUDA_VISIBLE_DEVICES": "0", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}}
    assert first["failed"] == [] and second["failed"] == [], [r["error"] for r in first["results"] + second["results"]]

    v1 = registry.ModelVersion.from_dict(registry.get_version(s3, bucket, first["promotion"]["challenger"]))
    v2 = registry.ModelVersion.from_dict(registry.get_version(s3, bucket, second["promotion"]["challenger"]))
    assert v1.version != v2.version
    for v in (v1, v2):  # registered under the data root, never under the run's manifest
        assert (v.dataset, v.test, v.random_init) == (data, "", False), v
        assert "/runs/" in v.run and "manifest.csv" not in v.dataset
        config = json.loads(storage.read_bytes(v.uri + "config.json", s3))
        meta = json.loads(storage.read_bytes(v.uri + "metrics.json", s3))["meta"]
        assert config["data_source"] == meta["data_source"] == data
    assert first["promotion"]["promoted"] is True, first["promotion"]
    assert first["promotion"]["decision"]["reason"] == "no champion yet"
    assert first["promotion"]["dataset"] == data

    stored = assert_gated_against(s3, v2, v1, data)
    champion = registry.champion(s3, bucket, dataset=data)
    assert champion["version"] == (v2.version if stored["promote"] else v1.version)
    assert set(registry.champions(s3, bucket)) >= {data}
    assert not [d for d in registry.champions(s3, bucket) if "/runs/" in d]  # no made-up dataset has a champion

    shown = subprocess.run([str(Path(sys.executable).with_name("scene")), "models", "list", "--dataset", data],
                           env=dict(os.environ), capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    listed = shown.stdout
    assert v1.version in listed and v2.version in listed, listed
    marked = [line for line in listed.splitlines() if line.lstrip().startswith("*")]
    assert len(marked) == 1 and champion["version"] in marked[0], listed

    # predictions use this dataset's champion when it is named; unnamed, only when it is the one dataset
    from flows.predict import resolve_model

    resolve = resolve_model.with_options(retries=0)
    path, classes = resolve(None, data)
    assert Path(path).read_bytes() == storage.read_bytes(champion["model"], s3) and len(classes) == 6
    if len(registry.champions(s3, bucket)) > 1:
        with pytest.raises(RuntimeError, match="datasets have a champion") as err:
            resolve(None, None)
        assert data in str(err.value)


def _slot_pool(env: dict[str, str]) -> tuple[str, subprocess.Popen]:
    """A process pool with one slot (concurrency limit 1) and a worker polling it every 2 s."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    name = f"one-slot-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process", concurrency_limit=1))
    worker = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", name,
                               "--type", "process", "--install-policy", "never"], cwd=REPO,
                              env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # the flow cancels runs still Scheduled after start_timeout_s when no worker polls the pool: wait until the
    # worker has polled (pool READY), else a slow machine's worker start-up reads as "no worker"
    from flows.dispatching import pool_status  # the status train-all reads before giving up on a run

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while pool_status(client, name) != "READY":
            if worker.poll() is not None or time.monotonic() > deadline:
                worker.kill()
                pytest.fail(f"the worker of pool {name} never polled it (exit code {worker.poll()})")
            time.sleep(0.5)
    return name, worker


def _evict_first_running(deployment_id: Any, done: dict[str, Any], stop: threading.Event) -> None:
    """SIGTERM the first child that has been Running for 3 s, as Kubernetes evicts a pod (the run is rescheduled)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        while not stop.is_set():
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment_id])))
            for run in runs:
                if (run.state and run.state.is_running() and run.infrastructure_pid
                        and time.time() - run.state.timestamp.timestamp() > 3):
                    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
                    os.kill(pid, signal.SIGTERM)
                    done.update(run=run.id, name=run.name, pid=pid)
                    return
            time.sleep(0.5)


def test_runs_waiting_for_a_slot_or_rescheduled_are_followed_not_cancelled(dataset_for_slots: str,
                                                                           env: dict[str, str]) -> None:
    from prefect.client.orchestration import get_client

    from flows.train_all import train_all

    pool, worker = _slot_pool(env)
    try:
        deployment = deploy_on_default_pool(
            "train-backbone", "flows/train_backbone.py:train_backbone", f"{pool}-evictable", pool=pool,
            job_variables={"command": f"{Path(sys.executable).with_name('prefect')} flow-run execute",  # as on k8s
                           "env": {"PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule"}})
        with get_client(sync_client=True) as client:
            deployment_id = client.read_deployment_by_name(deployment).id
        backbones = ["mobilenetv2", "efficientnetb0"]  # two runs, one slot
        with watching(_evict_first_running, deployment_id) as evicted:
            state = train_all(data=dataset_for_slots, params=_params("none", 1, backbones=backbones),
                              dispatch="deployments", deployment=deployment, start_timeout_s=3, promote=False,
                              return_state=True)
        assert state.is_completed(), state.message
        out = state.result()
        assert out["failed"] == [], [r["error"] for r in out["results"]]
        assert evicted, "no child was evicted: the test did not exercise the rescheduled path"
        with get_client(sync_client=True) as client:
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            children = client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment_id])))
            assert sorted(c.name for c in children) == sorted(backbones)
            assert all(c.state.is_completed() for c in children), {c.name: c.state for c in children}
            history = [s.name for s in client.read_flow_run_states(evicted["run"])]
        assert "AwaitingRetry" in history and history[-1] == "Completed", history
        assert history.count("Running") >= 2, history  # it ran again after the eviction
    finally:
        stop_group(worker)


@pytest.fixture(scope="module")
def dataset_for_slots(s3: Any, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    root = draw_hues(tmp_path_factory.mktemp("slots") / "hues", 0, size=SIZE, per_class=8)
    return upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}slots-{uuid.uuid4().hex[:6]}/")
