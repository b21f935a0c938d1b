"""Pull step for container work pools: enter the image's code and say, in the flow run's logs, where it runs.

prefect.yaml's container deployments use it instead of ``set_working_directory`` (whose directory would be
resolved on the deploying machine): ``flows.container.enter_image: {directory: /opt/scene}``.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

_CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/")


def container_id() -> str | None:
    """This process's Docker container id (from its mounts; cgroup v1 and v2), or None outside a container."""
    for source, pattern in (("/proc/self/mountinfo", _CONTAINER_ID), ("/proc/self/cgroup", re.compile(
            r"/docker[-/]([0-9a-f]{64})"))):
        try:
            found = pattern.search(Path(source).read_text())
        except OSError:
            continue
        if found:
            return found.group(1)
    return None


def enter_image(directory: str = "/opt/scene") -> dict[str, str]:
    """Check ``directory`` holds the code, log host and container id to the flow run, and work from there."""
    if not Path(directory, "flows").is_dir():
        raise FileNotFoundError(f"{directory}/flows: no scene code in this image; build it with deployments/Dockerfile "
                                "or fix the deployment's pull step directory")
    cid = container_id()
    message = f"running in container {cid or '(none found)'} on host {socket.gethostname()}, code in {directory}"
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")  # set by the worker: the line goes to that run's logs
    if run_id:
        logging.getLogger("prefect.flow_runs").info(message, extra={"flow_run_id": run_id})
    else:
        logging.getLogger(__name__).info(message)
    os.chdir(directory)
    return {"directory": directory, "container_id": cid or ""}
