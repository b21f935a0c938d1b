"""Commands as ``make run`` prints them work from the folder holding ``.state``, in a shell with nothing exported
(no ``eval "$(scene stack env)"``): the CLI finds the stack's endpoint and credentials itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from scene.ops.stack import StackInfo

pytestmark = pytest.mark.integration

SCENE = str(Path(sys.executable).with_name("scene"))


def _bare_env(home: Path) -> dict[str, str]:
    """A fresh shell's environment: no AWS_*, PREFECT_* or SCENE_* variables, an empty Prefect profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_", "SCENE_"))}
    return {**env, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1"}


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([SCENE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_printed_commands_find_the_stack_from_its_folder(stack: StackInfo, tmp_path: Path) -> None:
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    (repo / ".state").symlink_to(stack.state_dir)  # the repo root as make run leaves it
    env = _bare_env(tmp_path / "prefect-home")
    run_id = str(uuid.uuid4())
    started = [_start(args, cwd, env) for args, cwd in (  # side by side: each process start imports a lot
        (["models", "list", "--json"], repo),  # S3 with the stack's credentials
        (["runs", "show", run_id], repo),  # reaches the artifact bucket: the run is just not there
        (["runs", "watch", run_id, "--timeout", "30"], repo),  # Prefect, with the stack's auth string
        (["runs", "show", run_id], elsewhere))]  # no state folder here: no credentials
    listed, shown, watched, bare = (_finish(p) for p in started)

    assert listed.returncode == 0, listed.stderr
    assert set(json.loads(listed.stdout)) == {"versions", "champions"}
    assert shown.returncode == 1 and f"no comparison for run '{run_id}'" in shown.stderr, shown.stderr
    assert watched.returncode == 1 and run_id in watched.stderr, watched.stderr
    assert "401" not in watched.stderr and "PREFECT_API_URL" not in watched.stderr, watched.stderr
    assert bare.returncode == 1 and "no S3 credentials" in bare.stderr, bare.stderr  # says which variables to set
