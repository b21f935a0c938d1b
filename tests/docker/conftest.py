"""Fixtures for the Docker tests (``make test-docker``): a Docker daemon, the scene image, a stack with a docker pool.

These tests run only when selected with ``-m docker`` (``make test`` skips them, saying how to run them), and skip
with the reason when Docker cannot be used here. The image is built once and reused: Docker's layer cache keeps
the dependency layer (pinned by requirements.lock) between runs, so a code change rebuilds only the code layer.
Set ``SCENE_TEST_BASE_IMAGE`` (default ``scene-base:bookworm``, made by deployments/base-image.sh when missing)
to build on another base, e.g. ``python:3.11-slim`` where a registry is reachable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scene.ops import stack as stack_mod
from tests.support.ports import free_port
from tests.support.stackenv import api_settings, env_of

REPO = Path(__file__).resolve().parents[2]
BASE = os.environ.get("SCENE_TEST_BASE_IMAGE", "scene-base:bookworm")
IMAGE = os.environ.get("SCENE_TEST_IMAGE", "scene-cpu:latest")
TIMINGS: dict[str, float] = {}  # measured seconds, printed at the end of the session (make test-docker shows them)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    selected = "docker" in (config.option.markexpr or "")
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.docker)
            if not selected:
                item.add_marker(pytest.mark.skip(reason="Docker tests build an image and run containers: "
                                                 "run them with `make test-docker` (pytest -m docker tests/docker)"))


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    """Measured seconds by name; printed at the end of the session."""
    return TIMINGS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.write_line("docker timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in TIMINGS.items()))


def _run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


@pytest.fixture(scope="session")
def docker_daemon() -> str:
    """The docker client; starts dockerd (deployments/dockerd.sh) when none answers, else skips with the reason."""
    client = shutil.which("docker")
    if client is None:
        pytest.skip("Docker is absent here (no `docker` client on PATH); install docker.io to run these tests")
    if _run([client, "info"], 60).returncode != 0:
        if shutil.which("dockerd") is None or os.geteuid() != 0:
            pytest.skip("no Docker daemon answers and this user cannot start one (needs root and dockerd)")
        started = _run([str(REPO / "deployments" / "dockerd.sh")], 120)
        if started.returncode != 0:
            pytest.fail(f"deployments/dockerd.sh could not start Docker:\n{started.stdout}{started.stderr}")
    return client


@pytest.fixture(scope="session")
def scene_image(docker_daemon: str) -> str:
    """The CPU image from deployments/Dockerfile on ``BASE`` (made by deployments/base-image.sh when missing)."""
    if _run([docker_daemon, "image", "inspect", BASE], 60).returncode != 0:
        if BASE != "scene-base:bookworm":
            pytest.fail(f"base image {BASE} (SCENE_TEST_BASE_IMAGE) is not present; docker pull it first")
        made = _run([str(REPO / "deployments" / "base-image.sh"), BASE], 1800)
        assert made.returncode == 0, f"deployments/base-image.sh failed:\n{made.stdout[-3000:]}{made.stderr[-3000:]}"
    if os.environ.get("SCENE_TEST_NO_BUILD"):  # iterate on tests with an image built before
        assert _run([docker_daemon, "image", "inspect", IMAGE], 60).returncode == 0, f"no image {IMAGE} to reuse"
        return IMAGE
    # the classic builder, as prefect-docker's build step (docker-py) uses at deploy time: one layer cache for both
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    began = time.monotonic()
    built = _run([docker_daemon, "build", "-f", "deployments/Dockerfile", "--build-arg", f"BASE_IMAGE={BASE}",
                  "-t", IMAGE, "."], 3600, cwd=REPO, env=env)
    assert built.returncode == 0, f"docker build failed:\n{built.stdout[-4000:]}{built.stderr[-4000:]}"
    TIMINGS["image build"] = time.monotonic() - began
    _run([docker_daemon, "image", "prune", "-f"], 300)  # the previous code layers, now dangling
    return IMAGE


@pytest.fixture(scope="session")
def docker_stack(scene_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A stack with a `docker` pool (prefect-docker worker) and `train-backbone/docker` deployed; its env here."""
    pytest.importorskip("prefect_docker", reason="pip install -e '.[docker]' for the Docker worker")
    from prefect.settings import temporary_settings


    state = tmp_path_factory.mktemp("docker-stack") / "state"
    saved = dict(os.environ)
    os.environ["SCENE_DOCKER_IMAGE"] = scene_image
    began = time.monotonic()
    stack_mod.up(state, s3_port=free_port(), prefect_port=free_port(), pools=("docker",), workdir=REPO)
    TIMINGS["stack up"] = time.monotonic() - began
    try:
        os.environ.update(env_of(state, folders=True))
        prefect = str(Path(sys.executable).with_name("prefect"))
        repo_env = dict(os.environ, SCENE_REPO_DIR=str(REPO), SCENE_BASE_IMAGE=BASE)
        began = time.monotonic()  # the file's build step builds scene-cpu:<commit> (the layers cached above)
        deploy = _run([prefect, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect-docker.yaml",
                       "--name", "train-backbone/docker"], 1800, cwd=REPO, env=repo_env)
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
        TIMINGS["deploy (build step)"] = time.monotonic() - began
        with temporary_settings(updates=api_settings(dict(os.environ))):
            yield {**os.environ, "STATE_DIR": str(state)}
    finally:
        stack_mod.down(state)
        os.environ.clear()
        os.environ.update(saved)
