"""Pinning one flow run to its GPU(s): the job variables a dispatcher passes with ``run_deployment``.

Pure functions, no Prefect import: the dispatcher calls :func:`device_job_variables` with the ``type`` of the
deployment's work pool and the device ids it assigned to the run (``job_variables=...``).
"""

from __future__ import annotations

from typing import Any

POOL_TYPES = ("process", "docker", "kubernetes")
ALLOW_GROWTH = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}  # TensorFlow maps memory as it needs it, not the whole GPU


def device_job_variables(pool_type: str, devices: list[str]) -> dict[str, Any]:
    """The job variables that pin one flow run to ``devices`` (GPU ids such as ``["1"]``) on a pool of ``pool_type``.

    * ``process``: ``env: {CUDA_VISIBLE_DEVICES: "1", TF_FORCE_GPU_ALLOW_GROWTH: "true"}`` (the worker merges a run's
      ``env`` into the pool's, so the pool's other variables stay).
    * ``docker``: ``gpu_devices: ["1"]``, which deployments/docker-gpu.json renders into the container's
      ``device_requests: [{"Driver": "nvidia", "DeviceIDs": ["1"], "Capabilities": [["gpu"]]}]``.
    * ``kubernetes``: ``{}``. The NVIDIA device plugin gives each pod its own GPUs (the template's
      ``nvidia.com/gpu`` limit); a pod cannot choose device ids, and need not.

    An empty ``devices`` list pins nothing (``{}``). Raises ValueError for any other pool type, or a device id
    that is not a GPU index or UUID.
    """
    if pool_type not in POOL_TYPES:
        raise ValueError(f"device_job_variables: pool type {pool_type!r} has no GPU pinning; "
                         f"pass one of {', '.join(POOL_TYPES)}")
    ids = [str(d).strip() for d in devices]
    bad = [d for d in ids if not d or "," in d or " " in d]
    if bad:
        raise ValueError(f"device_job_variables: GPU ids {bad!r} are not device ids; pass e.g. ['0'] or ['GPU-<uuid>']")
    if not ids or pool_type == "kubernetes":
        return {}
    if pool_type == "process":
        return {"env": {"CUDA_VISIBLE_DEVICES": ",".join(ids), **ALLOW_GROWTH}}
    return {"gpu_devices": ids}
