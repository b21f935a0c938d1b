"""Container work pools through the session stack's Prefect API (issue 20): what the workers build for a flow run.

No Docker daemon and no cluster: the pools are created on the test stack's Prefect server from scene's templates,
a deployment and a flow run are created on them, and the job configuration is built as the Docker and Kubernetes
workers build it (``resolve_for_flow_run``: the pool's template, the deployment's and run's job variables, block
references resolved). Nothing polls these pools, so the runs stay Scheduled and are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GPU_IMAGE = "registry.example.com/team/scene-gpu:0123456789ab"  # what the build step of prefect-gpu.yaml outputs


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _deploy_and_run(pool: str, template: dict[str, Any], pool_type: str, deployment: dict[str, Any],
                          job_variables: dict[str, Any], run_variables: dict[str, Any] | None = None, *,
                          flow: str = "train-backbone", parameters: dict[str, Any] | None = None) -> Any:
    """Create ``pool`` from ``template``, ``deployment`` (of ``flow``) on it, a flow run with ``parameters``;
    (pool, deployment, flow run) read back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type, base_job_template=template),
                                      overwrite=True)
        flow_id = await client.create_flow_from_name(flow)
        dep_id = await client.create_deployment(
            flow_id=flow_id, name=f"{deployment['name']}-{pool}", work_pool_name=pool,
            entrypoint=deployment["entrypoint"], version=deployment.get("version"),
            job_variables=job_variables, pull_steps=deployment.get("pull"), parameters=deployment.get("parameters"))
        run = await client.create_flow_run_from_deployment(
            dep_id, parameters=parameters if parameters is not None else {"backbone": "mobilenetv2"},
            job_variables=run_variables)
        return (await client.read_work_pool(pool), await client.read_deployment(dep_id),
                await client.read_flow_run(run.id))


async def _configuration(cls: Any, pool: Any, deployment: Any, run: Any) -> Any:
    """The job configuration the worker of ``pool`` builds for ``run`` (prefect's own resolve_for_flow_run)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await cls.resolve_for_flow_run(run, client=client, work_pool=pool, worker_name="scene-test",
                                              deployment=deployment)


async def _cleanup(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    async with get_client() as client:
        if not any(p.name == pool for p in await client.read_work_pools()):
            return  # the test failed before creating it
        pools = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
        for run in await client.read_flow_runs(work_pool_filter=pools):
            await client.delete_flow_run(run.id)
        for dep in await client.read_deployments(work_pool_filter=pools):
            await client.delete_deployment(dep.id)
        await client.delete_work_pool(pool)


@pytest.fixture
def pool_name(env: dict[str, str]) -> Iterator[str]:
    name = f"check-{uuid4().hex[:8]}"
    yield name
    _run(_cleanup(name))


def test_the_stack_gpu_pool_runs_one_flow_run_per_gpu(env: dict[str, str], stack: Any) -> None:
    """make up's process `gpu` pool: concurrency limit = GPUs (SCENE_GPUS / --gpus, default 1)."""
    from prefect.client.orchestration import get_client

    from scene.ops import services
    from scene.ops import stack as stack_mod

    with get_client(sync_client=True) as client:
        assert client.read_work_pool("gpu").concurrency_limit == 1
        assert client.read_work_pool("default").concurrency_limit is None
    state = Path(stack.state_dir)
    try:  # what `scene stack up --gpus 2` (or SCENE_GPUS=2) does to the existing pool
        services.ensure_pools(env["PREFECT_API_URL"], ("gpu",), dict(os.environ), state, gpus=2)
        with get_client(sync_client=True) as client:
            assert client.read_work_pool("gpu").concurrency_limit == 2
    finally:
        services.ensure_pools(env["PREFECT_API_URL"], ("gpu",), dict(os.environ), state, gpus=1)
    with pytest.raises(stack_mod.StackError, match="SCENE_GPUS/--gpus '0'"):
        stack_mod.gpu_count(0)


def test_docker_pool_keeps_the_feature_cache_and_reads_credentials_from_secret_blocks(
        env: dict[str, str], pool_name: str) -> None:
    """The stack's docker pool template (read back from the API) has the feature cache in the artifact bucket and
    no credential; the worker's configuration for a run has the real key, resolved from the Secret block."""
    pytest.importorskip("prefect_docker", reason="pip install -e '.[docker]'")
    from prefect_docker.worker import DockerWorkerJobConfiguration

    from scene.ops import services

    secret = env["AWS_SECRET_ACCESS_KEY"]
    stale = {"AWS_ACCESS_KEY_ID": "old-id", "AWS_SECRET_ACCESS_KEY": "old-key"}  # a stack up before: replaced
    services.ensure_secret_blocks(env["PREFECT_API_URL"], {**env, **stale})
    assert services.ensure_secret_blocks(env["PREFECT_API_URL"], env) == list(services.SECRET_BLOCKS.values())
    template = services.docker_pool_job_template({**env, "SCENE_DOCKER_IMAGE": "scene-cpu:test"})
    docker = yaml.safe_load((REPO / "deployments" / "prefect-docker.yaml").read_text())
    trainer = next(d for d in docker["deployments"] if d["entrypoint"].endswith(":train_backbone"))
    pool, deployment, run = _run(_deploy_and_run(pool_name, template, "docker", {**trainer, "pull": docker["pull"]},
                                                 {"image": "scene-cpu:0123456789ab", "env": {"EXTRA": "1"}}))
    stored = json.dumps(pool.model_dump(mode="json"))
    assert secret not in stored and env["AWS_ACCESS_KEY_ID"] not in stored  # API, UI and `docker inspect` of it
    props = pool.base_job_template["variables"]["properties"]
    assert props["artifact_bucket"]["default"] == env["SCENE_ARTIFACT_BUCKET"]
    assert "SCENE_FEATURE_CACHE" in json.dumps(pool.base_job_template["job_configuration"]["env"])
    conf = _run(_configuration(DockerWorkerJobConfiguration, pool, deployment, run))
    assert conf.env["AWS_SECRET_ACCESS_KEY"] == secret and conf.env["AWS_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"]
    assert conf.env["SCENE_FEATURE_CACHE"] == f"s3://{env['SCENE_ARTIFACT_BUCKET']}/features/"
    assert conf.env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"] and conf.env["EXTRA"] == "1"  # merged, not replaced
    assert conf.env["PREFECT__FLOW_RUN_ID"] == str(run.id) and conf.image == "scene-cpu:0123456789ab"


def _strip_none(value: Any) -> Any:
    """What the API server stores: null fields are unset."""
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


CHUNK_RUNS = {  # each gpu deployment of prefect-gpu.yaml: its flow and a run's parameters
    "train_backbone": ("train-backbone", {"backbone": "mobilenetv2"}),
    "extract_chunk": ("extract-chunk", {"backbone": "mobilenetv2", "manifest_uri": "s3://a/runs/r/manifest.csv",
                                        "chunk": 0, "chunks": 4}),
    "predict_chunk": ("predict-chunk", {"model": "s3://a/m/model.keras", "folder": "s3://a/predictions/r/",
                                        "chunk": 0, "chunks": 4}),
    "read_chunk": ("read-chunk", {"data": "s3://d/datasets/x/", "folder": "s3://a/runs/r/reading", "chunk": 0,
                                  "chunks": 4}),
}


@pytest.mark.parametrize("entry", list(CHUNK_RUNS))
def test_kubernetes_job_for_a_gpu_run_is_a_valid_gpu_job(env: dict[str, str], pool_name: str, entry: str) -> None:
    """train-backbone/gpu, extract-chunk/gpu, read-chunk/gpu and predict-chunk/gpu (deployments/prefect-gpu.yaml) on a
    kubernetes
    pool from kubernetes-gpu.json: the Job the worker would submit for a real flow run validates against the
    Kubernetes OpenAPI schema and asks for a GPU (chunk runs are ordinary deployments of the same image)."""
    pytest.importorskip("prefect_kubernetes", reason="pip install -e '.[kubernetes]'")
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((REPO / "deployments" / "kubernetes-gpu.json").read_text())
    gpu = yaml.safe_load((REPO / "deployments" / "prefect-gpu.yaml").read_text())
    trainer = next(d for d in gpu["deployments"] if d["entrypoint"].endswith(f":{entry}"))
    flow, parameters = CHUNK_RUNS[entry]
    job_variables = {**trainer["work_pool"]["job_variables"], "image": GPU_IMAGE,
                     "artifact_bucket": env["SCENE_ARTIFACT_BUCKET"], "data_bucket": env["SCENE_DATA_BUCKET"]}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    pool, deployment, run = _run(_deploy_and_run(
        pool_name, template, "kubernetes", {**trainer, "version": "0123456789ab", "pull": gpu["pull"]},
        job_variables, run_variables={"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
        flow=flow, parameters=parameters))
    assert deployment.pull_steps == [{"flows.container.enter_image": {"directory": "/opt/scene"}}]
    conf = _run(_configuration(KubernetesWorkerJobConfiguration, pool, deployment, run))
    job = _strip_none(conf.job_manifest)
    pod = job["spec"]["template"]["spec"]
    # the worker's validator requires parallelism/completions in the pod spec; the API server drops them (F-3)
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    kubernetes_validate.validate(job, "1.30", strict=True)  # raises ValidationError naming the bad field
    (container,) = pod["containers"]
    assert container["image"] == GPU_IMAGE and container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"] == {"cpu": "3", "memory": "12Gi"}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}  # a run's own value wins
    assert pod["tolerations"] == tolerations
    (volume,) = pod["volumes"]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert {"name": volume["name"], "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400 and job["spec"]["activeDeadlineSeconds"] == 90000
    assert job["spec"]["backoffLimit"] == 0
    envs = {e["name"]: e.get("value") for e in container["env"]}
    assert envs["SCENE_ARTIFACT_BUCKET"] == env["SCENE_ARTIFACT_BUCKET"]
    assert envs["SCENE_DATA_BUCKET"] == env["SCENE_DATA_BUCKET"]
    assert envs["SCENE_FEATURE_CACHE"] == f"s3://{env['SCENE_ARTIFACT_BUCKET']}/features/"
    assert envs["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30" and envs["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert envs["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert envs["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"  # a preempted pod's run is rescheduled
    assert container["envFrom"] == [{"secretRef": {"name": "scene-s3-credentials"}}]
    assert env["AWS_SECRET_ACCESS_KEY"] not in json.dumps(job)
    with pytest.raises(kubernetes_validate.ValidationError):  # the check does catch a wrong manifest
        kubernetes_validate.validate({**job, "spec": {**job["spec"], "ttlSecondsAfterFinished": "a day"}}, "1.30",
                                     strict=True)


def test_a_docker_gpu_run_pinned_by_the_dispatcher_gets_that_device(env: dict[str, str], pool_name: str) -> None:
    """The job variables train-all passes for device "1" pass the server's validation against docker-gpu.json and
    reach the container's device request as DeviceIDs ["1"] (the pool's env kept)."""
    pytest.importorskip("prefect_docker", reason="pip install -e '.[docker]'")
    import docker.types
    from prefect_docker.worker import DockerWorkerJobConfiguration

    from scene.ops.gpus import device_job_variables

    template = json.loads((REPO / "deployments" / "docker-gpu.json").read_text())
    gpu = yaml.safe_load((REPO / "deployments" / "prefect-gpu.yaml").read_text())
    trainer = next(d for d in gpu["deployments"] if d["entrypoint"].endswith(":train_backbone"))
    pool, deployment, run = _run(_deploy_and_run(
        pool_name, template, "docker", {**trainer, "version": "0123456789ab", "pull": gpu["pull"]},
        {**trainer["work_pool"]["job_variables"], "image": GPU_IMAGE}, device_job_variables("docker", ["1"])))
    assert run.job_variables == {"gpu_devices": ["1"]}
    conf = _run(_configuration(DockerWorkerJobConfiguration, pool, deployment, run))
    (request,) = conf.container_create_kwargs["device_requests"]
    host = docker.types.HostConfig(version="1.41", device_requests=[request])  # what docker-py sends the daemon
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["1"] and not host["DeviceRequests"][0]["Count"]
    assert conf.env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and conf.image == GPU_IMAGE
