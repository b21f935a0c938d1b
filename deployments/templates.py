"""Write the work-pool base job templates in deployments/ from the Docker and Kubernetes workers' own defaults.

    .venv/bin/pip install -e '.[docker,kubernetes]' && .venv/bin/python deployments/templates.py

Each template is the worker's default with scene's values: the image, host networking (Docker) and, for GPU
pools, the device request (Docker) or ``nvidia.com/gpu`` limit, node selector and tolerations (Kubernetes) as
variables. The CPU and GPU templates of one worker differ only in those GPU parts and the default image.
tests/test_deployments.py checks the files equal this output and pass the workers' own validation.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FEATURE_CACHE = {"SCENE_FEATURE_CACHE": "s3://scene-artifacts/features/"}
GPU_REQUEST = {"Driver": "nvidia", "Count": "{{ gpus }}", "Capabilities": [["gpu"]]}
GPUS_VAR = {"title": "GPUs", "type": "integer", "default": 1, "description": "GPUs per flow run: one backbone per GPU"}


def _image(gpu: bool) -> dict[str, Any]:
    return {"default": "scene-gpu:latest" if gpu else "scene-cpu:latest",
            "description": "the scene image built from deployments/Dockerfile" + (" with GPU=1" if gpu else "")}


def docker_template(gpu: bool) -> dict[str, Any]:
    """The prefect-docker worker's default template; GPU: a device request of ``gpus`` NVIDIA GPUs."""
    from prefect_docker.worker import DockerWorker

    t = copy.deepcopy(DockerWorker.get_default_base_job_template())
    props = t["variables"]["properties"]
    props["image"].update(_image(gpu))
    props["network_mode"]["default"] = "host"  # the stack's S3 and Prefect API on the host's 127.0.0.1
    props["image_pull_policy"]["default"] = "IfNotPresent"
    props["auto_remove"]["default"] = True
    props["stream_output"]["default"] = True
    props["env"]["default"] = dict(FEATURE_CACHE)
    props["labels"]["default"] = {"app": "scene"}
    if gpu:
        props["gpus"] = dict(GPUS_VAR)
        t["job_configuration"]["container_create_kwargs"] = {"device_requests": [GPU_REQUEST], "shm_size": "8g"}
    return t


def kubernetes_template(gpu: bool) -> dict[str, Any]:
    """The prefect-kubernetes worker's default template; node selector, tolerations, pull policy as variables."""
    from prefect_kubernetes.worker import KubernetesWorker

    t = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    props = t["variables"]["properties"]
    props["image"].update(_image(gpu))
    props["image_pull_policy"]["default"] = "IfNotPresent"
    props["env"]["default"] = dict(FEATURE_CACHE)
    props["labels"]["default"] = {"app": "scene"}
    props["node_selector"] = {"title": "Node selector", "type": "object", "description": "nodeSelector of the pod",
                              "default": {"nvidia.com/gpu.present": "true"} if gpu else {}}
    props["tolerations"] = {"title": "Tolerations", "type": "array", "items": {"type": "object"},
                            "description": "tolerations of the pod",
                            "default": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                            if gpu else []}
    pod = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    container = pod["containers"][0]
    container["envFrom"] = [{"secretRef": {"name": "scene-s3-credentials"}}]  # AWS_* from a Kubernetes secret
    if gpu:
        props["gpus"] = dict(GPUS_VAR)
        container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpus }}"
    return t


TEMPLATES = {
    "docker-cpu.json": lambda: docker_template(False),
    "docker-gpu.json": lambda: docker_template(True),
    "kubernetes-cpu.json": lambda: kubernetes_template(False),
    "kubernetes-gpu.json": lambda: kubernetes_template(True),
}


def render(name: str) -> str:
    """The text of one template file."""
    return json.dumps(TEMPLATES[name](), indent=2, sort_keys=True) + "\n"


def main() -> int:
    for name in TEMPLATES:
        (HERE / name).write_text(render(name))
        print(HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
