"""Write the work-pool base job templates in deployments/ from the Docker and Kubernetes workers' own defaults.

    .venv/bin/pip install -e '.[docker,kubernetes]' && .venv/bin/python deployments/templates.py

Each template is the worker's default with scene's values: the image, the buckets (``data_bucket``,
``artifact_bucket``: the feature cache follows the artifact bucket), the flow-run heartbeat, host networking (Docker)
and, for GPU pools, ``TF_FORCE_GPU_ALLOW_GROWTH`` and the device request by id (Docker, ``gpu_devices``) or the
``nvidia.com/gpu`` limit, node selector and tolerations (Kubernetes) as variables; Kubernetes adds requests, a
memory-backed ``/dev/shm``, a finished-Job TTL and a deadline. The CPU and GPU templates of one worker differ only in
the GPU parts, the default image (and, on Kubernetes, the sizes).
tests/test_deployments.py checks the files equal this output and pass the workers' own validation.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HEARTBEAT_S = "30"  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY, as the stack's workers (scene/ops/services.py HEARTBEAT_S)
# Every template: the buckets as variables, the feature cache in the artifact bucket (s3://<artifact_bucket>/features/),
# merged by the worker under the pool's/deployment's `env` (a deployment's env adds to these, it does not drop them).
BUCKET_VARS = {
    "data_bucket": {"title": "Data bucket", "type": "string", "default": "scene-data",
                    "description": "SCENE_DATA_BUCKET of the flow runs (where datasets live)"},
    "artifact_bucket": {"title": "Artifact bucket", "type": "string", "default": "scene-artifacts",
                        "description": "SCENE_ARTIFACT_BUCKET; the feature cache is s3://<artifact bucket>/features/"},
}
BUCKET_ENV = {"SCENE_DATA_BUCKET": "{{ data_bucket }}", "SCENE_ARTIFACT_BUCKET": "{{ artifact_bucket }}",
              "SCENE_FEATURE_CACHE": "s3://{{ artifact_bucket }}/features/"}
CPU_ENV = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": HEARTBEAT_S}
GPU_ENV = {**CPU_ENV, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}  # TensorFlow takes GPU memory as it needs it
# Docker: GPUs by device id (one per run, scene.ops.gpus.device_job_variables), never by count: Docker's NVIDIA
# driver turns Count=N into devices 0..N-1, so every concurrent container would get GPU 0.
GPU_REQUEST = {"Driver": "nvidia", "DeviceIDs": "{{ gpu_devices }}", "Capabilities": [["gpu"]]}
GPU_DEVICES_VAR = {"title": "GPU ids", "type": "array", "items": {"type": "string"}, "default": ["0"],
                   "description": "NVIDIA device ids (or GPU UUIDs) given to the container; the dispatcher pins "
                                  "each run to its own, e.g. job_variables={\"gpu_devices\": [\"1\"]}"}
GPUS_VAR = {"title": "GPUs", "type": "integer", "default": 1, "description": "GPUs per flow run: one backbone per GPU"}
# Kubernetes requests: the smallest common GPU node (4 vCPU, 16 GiB, e.g. AWS g4dn.xlarge) still fits one pod
K8S_REQUESTS = {True: ("3", "12Gi", "8Gi"), False: ("1", "4Gi", "1Gi")}  # cpu, memory, /dev/shm size
JOB_TTL_S = 86400  # finished Jobs (and their pods) are deleted a day after they end
DEADLINE_S = 90000  # the Job is killed after 25 h: past the flows' own 24 h timeout, for a hung pod


def _image(gpu: bool) -> dict[str, Any]:
    return {"default": "scene-gpu:latest" if gpu else "scene-cpu:latest",
            "description": "the scene image built from deployments/Dockerfile" + (" with GPU=1" if gpu else "")}


def docker_template(gpu: bool) -> dict[str, Any]:
    """The prefect-docker worker's default template; GPU: a device request for the ids in ``gpu_devices``."""
    from prefect_docker.worker import DockerWorker

    t = copy.deepcopy(DockerWorker.get_default_base_job_template())
    props = t["variables"]["properties"]
    props["image"].update(_image(gpu))
    props["network_mode"]["default"] = "host"  # the stack's S3 and Prefect API on the host's 127.0.0.1
    props["image_pull_policy"]["default"] = "IfNotPresent"
    props["auto_remove"]["default"] = True
    props["stream_output"]["default"] = True
    props["env"]["default"] = dict(GPU_ENV if gpu else CPU_ENV)
    props["labels"]["default"] = {"app": "scene"}
    props.update(copy.deepcopy(BUCKET_VARS))
    t["job_configuration"]["env"] = dict(BUCKET_ENV)
    if gpu:
        props["gpu_devices"] = copy.deepcopy(GPU_DEVICES_VAR)
        t["job_configuration"]["container_create_kwargs"] = {"device_requests": [GPU_REQUEST], "shm_size": "8g"}
    return t


def kubernetes_template(gpu: bool) -> dict[str, Any]:
    """The prefect-kubernetes worker's default template; node selector, tolerations, pull policy as variables."""
    from prefect_kubernetes.worker import KubernetesWorker

    t = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    props = t["variables"]["properties"]
    props["image"].update(_image(gpu))
    props["image_pull_policy"]["default"] = "IfNotPresent"
    props["env"]["default"] = dict(GPU_ENV if gpu else CPU_ENV)
    props["labels"]["default"] = {"app": "scene"}
    props.update(copy.deepcopy(BUCKET_VARS))
    t["job_configuration"]["env"] = dict(BUCKET_ENV)
    cpu, memory, shm = K8S_REQUESTS[gpu]
    props["cpu_request"]["default"], props["memory_request"]["default"] = cpu, memory
    props["finished_job_ttl"]["default"] = JOB_TTL_S
    props["node_selector"] = {"title": "Node selector", "type": "object",
                              "description": "nodeSelector of the pod (GKE: cloud.google.com/gke-accelerator)",
                              "default": {"nvidia.com/gpu.present": "true"} if gpu else {}}
    props["tolerations"] = {"title": "Tolerations", "type": "array", "items": {"type": "object"},
                            "description": "tolerations of the pod",
                            "default": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                            if gpu else []}
    props["shm_size"] = {"title": "Shared memory", "type": "string", "default": shm,
                         "description": "size of /dev/shm (a memory-backed emptyDir; a pod's default is 64 MiB)"}
    props["active_deadline_seconds"] = {"title": "Job deadline (s)", "anyOf": [{"type": "integer"}, {"type": "null"}],
                                        "default": DEADLINE_S, "description": "activeDeadlineSeconds of the Job"}
    job = t["job_configuration"]["job_manifest"]["spec"]
    job["activeDeadlineSeconds"] = "{{ active_deadline_seconds }}"
    pod = job["template"]["spec"]
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    pod["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}}]
    container = pod["containers"][0]
    container["envFrom"] = [{"secretRef": {"name": "scene-s3-credentials"}}]  # AWS_* from a Kubernetes secret
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
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
