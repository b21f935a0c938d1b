"""make test-docker: train-all sends each backbone into its own container of the scene image (issues 13, 20).

A real stack (S3 gateway + Prefect server) with a `docker` work pool and its prefect-docker worker; the image
built from deployments/Dockerfile; containers on the host network reach the stack on 127.0.0.1.
"""

from __future__ import annotations

import contextvars
import json
import subprocess
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pytest

from scene import registry
from scene.data import storage
from scene.data.synth import make_synthetic
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.runs import assert_gated_against
from tests.support.s3io import client_from_env, upload

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]  # building the image takes minutes
BACKBONES = ["mobilenetv2", "efficientnetb0"]
FAST = {"params": {"backbones": BACKBONES, "weights": "none", "epochs": 1, "views": 0, "image_size": 32,
                   "finetune_layers": 0, "mixed_precision": False},
        "start_timeout_s": 600.0, "dispatch_timeout_s": 1200.0}


@pytest.fixture(scope="module")
def s3(docker_stack: dict[str, str]) -> Any:
    return client_from_env()


@pytest.fixture(scope="module")
def dataset(s3: Any, docker_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    root = make_synthetic(tmp_path_factory.mktemp("d") / "tiny", 8, size=40, seed=11)
    return upload(s3, root, f"s3://{docker_stack['SCENE_DATA_BUCKET']}/{docker_stack['SCENE_DATA_PREFIX']}tiny/")


def _children(parent: UUID) -> dict[str, Any]:
    """The deployed train-backbone flow runs of a train-all run, by name (the backbone)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
    return {r.name: r for r in runs if r.deployment_id is not None}


def _logs(run_id: UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[run_id])))]


def _overhead(run_id: UUID) -> dict[str, float]:
    """Seconds from the worker taking the run (Pending: container created) to the engine running in the container
    (Running) and to the first task starting (the first batch of work)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        states = {s.type.value: s.timestamp for s in reversed(client.read_flow_run_states(run_id))}
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    first_task = min(t.start_time for t in tasks if t.start_time)
    return {"to_running": (states["RUNNING"] - states["PENDING"]).total_seconds(),
            "to_first_task": (first_task - states["PENDING"]).total_seconds()}


def _container_of(run: Any) -> str:
    """The container id the docker worker recorded for the run (infrastructure_pid = <docker url>:<id>)."""
    assert run.infrastructure_pid, f"flow run {run.id} has no infrastructure pid: no container was started"
    return run.infrastructure_pid.rsplit(":", 1)[1]


def test_docker_pool_and_deployment_carry_no_secret_and_the_built_image(docker_stack: dict[str, str]) -> None:
    """The stack's docker pool (read back from the API): feature cache kept, no credential; train-backbone/docker
    runs scene-cpu:<commit>, the image its build step made, and its version is that commit."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("docker")
        deployment = client.read_deployment_by_name("train-backbone/docker")
    stored = json.dumps(pool.model_dump(mode="json"))
    assert docker_stack["AWS_SECRET_ACCESS_KEY"] not in stored and "prefect.blocks.secret." in stored
    assert "SCENE_FEATURE_CACHE" in stored
    commit = deployment.version  # the commit checked out at deploy time (others may have committed since)
    assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], check=False).returncode == 0, commit
    assert len(commit) == 12 and deployment.job_variables["image"] == f"scene-cpu:{commit}"
    assert deployment.pull_steps == [{"flows.container.enter_image": {"directory": "/opt/scene"}}]
    inspect = subprocess.run(["docker", "image", "inspect", f"scene-cpu:{commit}"], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr


def test_train_all_runs_each_backbone_in_its_own_container(dataset: str, s3: Any, timings: dict) -> None:
    from flows.train_all import train_all

    began = time.monotonic()
    state = train_all(data=dataset, dispatch="docker", return_state=True, **FAST)
    timings["train-all (2 backbones in containers)"] = time.monotonic() - began
    assert state.is_completed(), state.message
    out = state.result()
    assert out["failed"] == [], [r["error"] for r in out["results"]]
    assert sorted(r["backbone"] for r in out["results"]) == sorted(BACKBONES)  # the parent collected both
    assert all(r["metrics"].get("test") for r in out["results"]), out["results"]
    children = _children(state.state_details.flow_run_id)
    assert sorted(children) == sorted(BACKBONES)
    containers = set()
    for b, run in children.items():
        assert run.state.is_completed() and run.work_pool_name == "docker", (b, run.state, run.work_pool_name)
        cid = _container_of(run)
        logs = _logs(run.id)
        assert any(f"running in container {cid}" in m for m in logs), (b, cid, logs[:10])
        containers.add(cid)
        for k, v in _overhead(run.id).items():
            timings[f"{b} {k}"] = v
    assert len(containers) == 2  # one container per backbone
    prefix = out["prefix"]
    for b in BACKBONES:
        listed = json.loads(storage.read_bytes(f"{prefix}{b}/checksums.json", s3))
        assert {"model.keras", "metrics.json", "report.html"} <= {u["uri"].rsplit("/", 1)[-1] for u in listed}
        for u in listed:  # written from inside the container, read back here: same bytes
            assert storage.sha256_bytes(storage.read_bytes(u["uri"], s3)) == u["sha256"], u["uri"]
    table = storage.read_bytes(prefix + "comparison.csv", s3).decode()
    assert all(b in table for b in BACKBONES)


def _kill_when_running(parent: list[UUID], backbone: str, future: Future, timeout: float = 600.0) -> Any:
    """Wait until ``backbone``'s run works inside its container, then `docker kill` that container."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if future.done():  # the parent ended before the victim ran: show why
            raise AssertionError(f"train-all ended before {backbone} ran in a container: {future.result()}")
        run = _children(parent[0]).get(backbone) if parent else None
        if run is not None and run.state.is_running() and run.infrastructure_pid:
            cid = _container_of(run)
            if any(f"running in container {cid}" in m for m in _logs(run.id)):
                killed = subprocess.run(["docker", "kill", cid], capture_output=True, text=True, timeout=60)
                assert killed.returncode == 0, killed.stderr
                return run
        time.sleep(1.0)
    raise AssertionError(f"{backbone}'s flow run never ran in a container within {timeout:.0f} s")


def test_a_killed_container_crashes_its_run_and_leaves_the_rest_of_the_table(dataset: str, s3: Any) -> None:
    from flows.train_all import train_all

    parent: list[UUID] = []
    flow = train_all.with_options(on_running=[lambda f, r, s: parent.append(r.id)])
    context = contextvars.copy_context()  # this thread's Prefect settings (the test stack's API) for the parent
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(context.run, lambda: flow(data=dataset, dispatch="docker",
                                                       return_state=True, **FAST))
        victim = _kill_when_running(parent, "efficientnetb0", future)
        state = future.result(timeout=900)
    assert state.is_completed(), state.message  # one backbone survived: the run completes with a failed row
    out = state.result()
    assert out["failed"] == ["efficientnetb0"]
    rows = {r["backbone"]: r for r in out["results"]}
    assert rows["mobilenetv2"]["status"] != "failed" and rows["mobilenetv2"]["metrics"].get("test")
    assert str(victim.id) in rows["efficientnetb0"]["error"] and "Crashed" in rows["efficientnetb0"]["error"]
    assert _children(parent[0])["efficientnetb0"].state.is_crashed()
    table = storage.read_bytes(out["prefix"] + "comparison.csv", s3).decode()
    assert "mobilenetv2" in table and "efficientnetb0" in table


def test_dispatched_container_versions_register_under_the_data_root_and_are_gated(
        s3: Any, docker_stack: dict[str, str], tmp_path: Any, capsys: Any, timings: dict) -> None:
    """As tests/integration/test_dispatch.py on the process pool, with dispatch=docker: calibrated MobileNetV2 weights
    (an s3:// file the containers read), the same data twice with two recipes. The first version is promoted "no
    champion yet" for the data root; the second is gated against it (decision.json's paired counts recomputed here);
    `scene models list --dataset ROOT` shows both."""
    from flows.train_all import train_all

    bucket, size = docker_stack["SCENE_ARTIFACT_BUCKET"], 32
    local = calibrated_mobilenetv2(tmp_path, size)
    weights = f"s3://{bucket}/test-weights/{uuid.uuid4().hex[:8]}/mobilenetv2-calibrated.weights.h5"
    storage.upload_file(local, weights, s3)
    data = f"s3://{docker_stack['SCENE_DATA_BUCKET']}/{docker_stack['SCENE_DATA_PREFIX']}dock-{uuid.uuid4().hex[:8]}/"
    upload(s3, draw_hues(tmp_path / "hues", 0, size=size, per_class=12), data)
    runs = []
    for epochs in (30, 45):  # the same data twice, two recipes (so two versions)
        params = {"backbones": ["mobilenetv2"], "weights": weights, "epochs": epochs, "views": 0, "image_size": size,
                  "finetune_layers": 0, "mixed_precision": False}
        began = time.monotonic()
        state = train_all(data=data, params=params, dispatch="docker", start_timeout_s=600.0,
                          dispatch_timeout_s=1200.0, return_state=True)
        timings[f"train-all gated ({epochs} epochs, 1 container)"] = time.monotonic() - began
        assert state.is_completed(), state.message
        out = state.result()
        assert out["failed"] == [], [r["error"] for r in out["results"]]
        (child,) = _children(state.state_details.flow_run_id).values()
        assert child.work_pool_name == "docker" and any("running in container" in m for m in _logs(child.id))
        runs.append(out)
    first, second = runs

    v1 = registry.ModelVersion.from_dict(registry.get_version(s3, bucket, first["promotion"]["challenger"]))
    v2 = registry.ModelVersion.from_dict(registry.get_version(s3, bucket, second["promotion"]["challenger"]))
    assert v1.version != v2.version
    for v in (v1, v2):  # registered under the data root, never under the run's manifest
        assert (v.dataset, v.random_init) == (data, False), v
        assert "manifest.csv" not in v.dataset
        config = json.loads(storage.read_bytes(v.uri + "config.json", s3))
        assert config["data_source"] == data
    assert first["promotion"]["promoted"] is True and first["promotion"]["decision"]["reason"] == "no champion yet"
    assert first["promotion"]["dataset"] == data

    stored = assert_gated_against(s3, v2, v1, data)
    champion = registry.champion(s3, bucket, dataset=data)
    assert champion["version"] == (v2.version if stored["promote"] else v1.version)
    assert not [d for d in registry.champions(s3, bucket) if "/runs/" in d]  # no made-up dataset has a champion

    from scene.cli.main import main

    capsys.readouterr()
    assert main(["models", "list", "--dataset", data]) in (0, None)
    listed = capsys.readouterr().out
    assert v1.version in listed and v2.version in listed, listed
    marked = [line for line in listed.splitlines() if line.lstrip().startswith("*")]
    assert len(marked) == 1 and champion["version"] in marked[0], listed
