"""The real local stack for integration tests: started once per session in a temporary state folder."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from scene import stack as stack_mod

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack_mod.StackInfo]:
    reuse = os.environ.get("SCENE_TEST_REUSE_STACK")
    if reuse:
        yield stack_mod.info(reuse)
        return
    state = tmp_path_factory.mktemp("stack")
    info = stack_mod.up(state, s3_port=_free_port(), prefect_port=_free_port(), pools=("default", "gpu"),
                        workdir=REPO)
    try:
        yield info
    finally:
        stack_mod.down(state)
