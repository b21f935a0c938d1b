"""prefect.yaml: which pool each deployment runs on and what the retraining schedule retrains."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deployments() -> dict[tuple[str, str], dict[str, Any]]:
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    flows = {"train_all": "train-all", "train_backbone": "train-backbone", "retrain": "retrain", "watch": "watch",
             "predict": "predict", "extract_chunk": "extract-chunk", "read_chunk": "read-chunk",
             "predict_chunk": "predict-chunk"}
    return {(flows[d["entrypoint"].rsplit(":", 1)[1]], d["name"]): d for d in doc["deployments"]}


def test_gpu_orchestrator_waits_on_the_cpu_pool_and_backbones_train_on_gpus(deployments: dict) -> None:
    orchestrator, trainer = deployments[("train-all", "gpu")], deployments[("train-backbone", "gpu")]
    assert orchestrator["work_pool"]["name"] == "default"  # it only validates, dispatches and waits
    assert trainer["work_pool"]["name"] == "gpu"
    params = orchestrator["parameters"]
    assert params["dispatch"] == "deployments" and params["deployment"] == "train-backbone/gpu"
    assert 0 < params["start_timeout_s"] < params["dispatch_timeout_s"]


def test_retrain_has_no_default_dataset_so_the_schedule_retrains_champions(deployments: dict) -> None:
    retrain = deployments[("retrain", "default")]
    assert "data" not in (retrain.get("parameters") or {})
    for schedule in retrain["schedules"]:
        assert "data" not in (schedule.get("parameters") or {}), schedule
        assert schedule["parameters"]["only_if_changed"] is True
    (trigger,) = retrain["triggers"]
    assert trigger["parameters"]["data"] == "{{ event.payload.data }}"  # an event retrains the dataset it names


# ---------------------------------------------------------------------------- container pools (issue 13)


def test_make_deploy_only_targets_the_pools_make_up_creates(deployments: dict) -> None:
    """`prefect deploy --all` fails on a deployment whose work pool does not exist: prefect.yaml uses only these."""
    up = re.search(r"^up:.*\n\t(.*)$", (REPO / "Makefile").read_text(), re.M).group(1)
    pools = {p for listed in re.findall(r"--pools (\S+)", up) for p in listed.split(",")}
    assert {d["work_pool"]["name"] for d in deployments.values()} <= pools


def test_docker_deployments_run_the_image_code_not_the_deploying_checkout() -> None:
    """train-backbone/docker cds into the image's /opt/scene at run time; train-all/docker dispatches to it."""
    import ast

    doc = yaml.safe_load((REPO / "deployments" / "prefect-docker.yaml").read_text())
    by_flow = {d["entrypoint"].rsplit(":", 1)[1]: d for d in doc["deployments"] if d["name"] == "docker"}
    trainer, orchestrator = by_flow["train_backbone"], by_flow["train_all"]
    assert trainer["work_pool"]["name"] == "docker"
    assert trainer.get("pull", doc["pull"]) == [{"flows.container.enter_image": {"directory": "/opt/scene"}}]
    assert orchestrator["work_pool"]["name"] == "default" and orchestrator["parameters"]["dispatch"] == "docker"
    assert "SCENE_REPO_DIR" in json.dumps(orchestrator["pull"])  # a process worker on the deploying host
    tree = ast.parse((REPO / "flows" / "train_all.py").read_text())
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
    assert consts["DOCKER_DEPLOYMENT"] == "train-backbone/docker"


def test_the_lock_pins_every_dependency_within_pyproject_ranges() -> None:
    """requirements.lock (make install's and the image's pins) covers pyproject's dependencies and the extras make
    install uses, each within its range; the Dockerfile installs from it."""
    import re
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [ln for ln in (REPO / "requirements.lock").read_text().splitlines() if re.match(r"[A-Za-z0-9]", ln)]
    pins = {canonicalize_name(n): v for n, v in (ln.split(" ", 1)[0].split("==") for ln in lines)}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = re.search(r"^EXTRAS := (.+)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    assert extras and set(extras) <= set(project["optional-dependencies"]), extras
    for dep in project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} missing from requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {dep}"
    dockerfile = (REPO / "deployments" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile and "\nUSER scene" in dockerfile
    assert "pip install -c /tmp/requirements.lock" in dockerfile and "!requirements.lock" in (
        REPO / ".dockerignore").read_text()


def _templates() -> Any:
    pytest.importorskip("prefect_docker", reason="pip install -e '.[docker]' to check the Docker job templates")
    pytest.importorskip("prefect_kubernetes", reason="pip install -e '.[kubernetes]' to check the Kubernetes ones")
    spec = importlib.util.spec_from_file_location("scene_templates", REPO / "deployments" / "templates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _configure(cls: Any, template: dict[str, Any], values: dict[str, Any]) -> Any:
    """The worker's job configuration for a flow run with ``values`` (what the worker builds, minus the API).

    As ``BaseJobConfiguration.from_template_and_values``: the template's own ``env`` dict, then the pool's ``env``
    default, then the run's ``env`` are merged (prefect 3.9); every other variable replaces its default.
    """
    import copy

    from prefect.utilities.templating import apply_values

    defaults = {k: p["default"] for k, p in template["variables"]["properties"].items() if "default" in p}
    base = copy.deepcopy(template["job_configuration"])
    variables = {**defaults, **values}
    if isinstance(base.get("env"), dict):
        base["env"] = {**base["env"], **(defaults.get("env") or {}), **(values.get("env") or {})}
    return cls(**apply_values(base, variables))


@pytest.mark.parametrize("name", ["docker-cpu.json", "docker-gpu.json", "kubernetes-cpu.json", "kubernetes-gpu.json"])
def test_templates_are_the_workers_own_defaults_with_scene_values(name: str) -> None:
    templates = _templates()
    assert json.loads((REPO / "deployments" / name).read_text()) == json.loads(templates.render(name)), (
        f"deployments/{name} differs from the installed worker's default + scene's values: "
        "run deployments/templates.py")


def test_kubernetes_gpu_template_passes_the_workers_validation_with_its_variables() -> None:
    _templates()
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((REPO / "deployments" / "kubernetes-gpu.json").read_text())
    tolerations = [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    config = _configure(KubernetesWorkerJobConfiguration, template, {
        "gpus": 2, "node_selector": {"pool": "a100"}, "tolerations": tolerations, "image_pull_policy": "Always"})
    job = config.job_manifest["spec"]["template"]["spec"]
    assert job["parallelism"] == 1 and job["completions"] == 1  # the worker rejects a job without them
    assert job["nodeSelector"] == {"pool": "a100"} and job["tolerations"] == tolerations
    (container,) = job["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2 and container["imagePullPolicy"] == "Always"
    assert container["envFrom"] == [{"secretRef": {"name": "scene-s3-credentials"}}]
    default = _configure(KubernetesWorkerJobConfiguration, template, {}).job_manifest["spec"]["template"]["spec"]
    assert default["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    cpu = json.loads((REPO / "deployments" / "kubernetes-cpu.json").read_text())
    cpu_job = _configure(KubernetesWorkerJobConfiguration, cpu, {}).job_manifest["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu_job["containers"][0]["resources"]["limits"] and cpu_job["tolerations"] == []


def test_docker_gpu_template_differs_from_the_cpu_one_only_by_the_device_request() -> None:
    _templates()
    import docker.types
    from prefect_docker.worker import DockerWorkerJobConfiguration

    cpu, gpu = (json.loads((REPO / "deployments" / f"docker-{k}.json").read_text()) for k in ("cpu", "gpu"))
    gpu_conf = _configure(DockerWorkerJobConfiguration, gpu, {})
    (request,) = gpu_conf.container_create_kwargs["device_requests"]
    host = docker.types.HostConfig(version="1.41", device_requests=[request])  # what docker-py sends the daemon
    assert host["DeviceRequests"][0]["DeviceIDs"] == ["0"] and host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert not host["DeviceRequests"][0].get("Count")  # a count gives every container GPUs 0..N-1
    cpu_conf = _configure(DockerWorkerJobConfiguration, cpu, {})
    assert not cpu_conf.container_create_kwargs and cpu_conf.network_mode == gpu_conf.network_mode == "host"
    assert gpu_conf.env == {**cpu_conf.env, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    for t in (cpu, gpu):  # apart from the GPU parts and the default image, the two are one template
        t["job_configuration"].pop("container_create_kwargs")
        for var in ("gpu_devices", "container_create_kwargs", "image", "env"):
            t["variables"]["properties"].pop(var, None)
    assert cpu == gpu


@pytest.mark.parametrize("name", ["docker-cpu.json", "docker-gpu.json", "kubernetes-cpu.json", "kubernetes-gpu.json"])
def test_every_template_follows_the_buckets_and_gpu_ones_let_memory_grow(name: str) -> None:
    """SCENE_FEATURE_CACHE is in the artifact bucket the pool names, and survives a deployment's own env."""
    _templates()
    from prefect_docker.worker import DockerWorkerJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    cls = DockerWorkerJobConfiguration if name.startswith("docker") else KubernetesWorkerJobConfiguration
    template = json.loads((REPO / "deployments" / name).read_text())
    conf = _configure(cls, template, {"artifact_bucket": "arts", "data_bucket": "imgs", "env": {"EXTRA": "1"}})
    assert conf.env["SCENE_FEATURE_CACHE"] == "s3://arts/features/" and conf.env["SCENE_ARTIFACT_BUCKET"] == "arts"
    assert conf.env["SCENE_DATA_BUCKET"] == "imgs" and conf.env["EXTRA"] == "1"
    assert conf.env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert (conf.env.get("TF_FORCE_GPU_ALLOW_GROWTH") == "true") == ("gpu" in name)
    assert "scene-artifacts" not in json.dumps(template["job_configuration"])  # no bucket hardcoded in the job


# ---------------------------------------------------------------------------- GPU pinning (issue 20)


def test_device_job_variables_pin_a_run_to_its_gpu_on_each_pool_type() -> None:
    from scene.ops.gpus import device_job_variables

    assert device_job_variables("process", ["1"]) == {
        "env": {"CUDA_VISIBLE_DEVICES": "1", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}}
    assert device_job_variables("process", ["0", "2"])["env"]["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert device_job_variables("docker", ["1"]) == {"gpu_devices": ["1"]}
    assert device_job_variables("kubernetes", ["1"]) == {}  # the device plugin allocates
    assert device_job_variables("docker", []) == {}
    with pytest.raises(ValueError, match=r"pool type 'ecs'.*process, docker, kubernetes"):
        device_job_variables("ecs", ["0"])
    with pytest.raises(ValueError, match="not device ids"):
        device_job_variables("docker", ["0,1"])


def test_docker_device_ids_render_into_the_containers_device_request() -> None:
    """What the dispatcher passes reaches docker-py's create kwargs as DeviceIDs, the pool's env kept."""
    _templates()
    import docker.types
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker
    from prefect_docker.worker import DockerWorkerJobConfiguration

    from scene.ops.gpus import device_job_variables

    gpu = json.loads((REPO / "deployments" / "docker-gpu.json").read_text())
    conf = _configure(DockerWorkerJobConfiguration, gpu, device_job_variables("docker", ["1"]))
    (request,) = conf.container_create_kwargs["device_requests"]
    host = docker.types.HostConfig(version="1.41", device_requests=[request])
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["1"], "Capabilities": [["gpu"]],
                                       "Options": {}}]
    assert conf.env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and conf.env["SCENE_FEATURE_CACHE"]
    process = ProcessWorker.get_default_base_job_template()
    pconf = _configure(ProcessJobConfiguration, process, device_job_variables("process", ["1"]))
    assert pconf.env["CUDA_VISIBLE_DEVICES"] == "1"


def test_enter_image_names_a_missing_code_directory_and_enters_a_real_one(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.container import enter_image

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "flows")):
        enter_image(str(tmp_path))
    (tmp_path / "flows").mkdir()
    monkeypatch.chdir(REPO)
    out = enter_image(str(tmp_path))
    assert out["directory"] == str(tmp_path) and Path.cwd() == tmp_path


def test_stack_docker_pool_says_how_to_get_docker_when_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`scene stack up --pools docker` without Docker: a clear error naming what to do, no pool created."""
    pytest.importorskip("prefect_docker", reason="pip install -e '.[docker]'")
    from scene.ops import services, stack

    monkeypatch.setenv("PATH", str(tmp_path))  # no docker client
    with pytest.raises(stack.StackError, match=r"--pools docker: no Docker daemon answers.*deployments/dockerd\.sh"):
        services.docker_pool_template(tmp_path, {})
    assert not (tmp_path / "docker-pool.json").exists()
    assert services.pool_type("docker") == "docker" and services.pool_type("gpu") == "process"


# ---------------------------------------------------------------------------- built container deployments (issue 20)

CONTAINER_POOLS = ("docker", "kubernetes")


def _prefect_files() -> list[Path]:
    """Every prefect deployment file in the repository (prefect.yaml and deployments/prefect-*.yaml)."""
    files = [REPO / "prefect.yaml", *sorted((REPO / "deployments").glob("prefect*.yaml"))]
    assert len(files) >= 3, files
    return files


@pytest.mark.parametrize("path", _prefect_files(), ids=lambda p: p.name)
def test_container_deployments_run_the_built_image_never_the_deploying_checkout(path: Path) -> None:
    """A deployment on a docker/kubernetes pool (as the file declares it, definitions.work_pools) uses the image its
    build step made from the commit, enters it with flows.container.enter_image, and never set_working_directory."""
    doc = yaml.safe_load(path.read_text())
    pools = doc.get("definitions", {}).get("work_pools")
    assert isinstance(pools, dict), f"{path.name}: declare the type of each pool under definitions.work_pools"
    build = {s.get("id"): (name, s) for step in doc.get("build") or [] for name, s in step.items()}
    for d in doc["deployments"]:
        where = f"{path.name}: {d['entrypoint']} ({d['name']}) on pool {d['work_pool']['name']!r}"
        kind = pools.get(d["work_pool"]["name"])
        assert kind in ("process", *CONTAINER_POOLS), f"{where}: its pool type is not declared"
        pull = json.dumps(d.get("pull", doc.get("pull")))
        if kind == "process":
            assert "set_working_directory" in pull, where  # a process worker runs the deploying checkout
            continue
        assert "set_working_directory" not in pull and "flows.container.enter_image" in pull, where
        image = d["work_pool"].get("job_variables", {}).get("image", "")
        assert image == "{{ build-image.image }}", f"{where}: job_variables.image must be the built image"
        step, args = build["build-image"]
        assert step == "prefect_docker.deployments.steps.build_docker_image" and args["dockerfile"] == (
            "deployments/Dockerfile")
        assert args["tag"] == d["version"] == "{{ commit.stdout }}", f"{where}: tag and version are the commit"
        assert build["commit"][1]["script"] == "git rev-parse --short=12 HEAD"


def test_the_gpu_container_file_pushes_what_it_builds_and_replaces_the_gpu_deployments(deployments: dict) -> None:
    """deployments/prefect-gpu.yaml: the same deployment names train-all/gpu dispatches backbones and feature chunks
    to, and predict its chunks to (the process versions in prefect.yaml), the image pushed."""
    doc = yaml.safe_load((REPO / "deployments" / "prefect-gpu.yaml").read_text())
    by_flow = {d["entrypoint"]: d for d in doc["deployments"]}
    assert len(by_flow) == len(doc["deployments"]) == 4
    for flow in ("train-backbone", "extract-chunk", "read-chunk", "predict-chunk"):
        mine = deployments[(flow, "gpu")]
        container = by_flow[mine["entrypoint"]]
        assert container["name"] == "gpu" and container["work_pool"]["name"] == mine["work_pool"]["name"] == "gpu"
        assert container.get("parameters") == mine.get("parameters"), flow
    assert by_flow["flows/train_backbone.py:train_backbone"]["parameters"]["params"]["mixed_precision"]
    (push,) = doc["push"]
    assert push["prefect_docker.deployments.steps.push_docker_image"]["tag"] == "{{ build-image.tag }}"
    assert doc["definitions"]["work_pools"]["gpu"] in CONTAINER_POOLS


def test_build_steps_name_the_image_after_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect runs the shell steps; the build step and the deployment get the commit and the base image."""
    import asyncio
    import subprocess

    from prefect.deployments.steps.utility import run_shell_script
    from prefect.utilities.templating import apply_values

    def run_step(step: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:  # as `prefect deploy` runs it
        ((name, args),) = step.items()
        assert name == "prefect.deployments.steps.run_shell_script"
        args = {k: v for k, v in apply_values(args, outputs).items() if k not in ("id", "requires")}
        return asyncio.run(run_shell_script(**args))

    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=REPO,
                            check=True).stdout.strip()
    doc = yaml.safe_load((REPO / "deployments" / "prefect-gpu.yaml").read_text())
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SCENE_REGISTRY", "registry.example/team")
    monkeypatch.delenv("SCENE_BASE_IMAGE", raising=False)
    outputs: dict[str, Any] = {}
    for step in doc["build"][:3]:
        ((_, args),) = step.items()
        outputs[args["id"]] = run_step(step, outputs)
    build = apply_values(doc["build"][3]["prefect_docker.deployments.steps.build_docker_image"], outputs)
    assert build["image_name"] == "registry.example/team/scene-gpu" and build["tag"] == commit
    assert build["buildargs"] == {"BASE_IMAGE": "python:3.11-slim", "GPU": "1"}
    image = f"{build['image_name']}:{build['tag']}"
    deployment = apply_values(doc["deployments"][0], {**outputs, "build-image": {"image": image}})
    assert deployment["version"] == commit and deployment["work_pool"]["job_variables"]["image"] == image
    monkeypatch.delenv("SCENE_REGISTRY")
    with pytest.raises(RuntimeError, match="SCENE_REGISTRY"):
        run_step(doc["build"][0], {})
