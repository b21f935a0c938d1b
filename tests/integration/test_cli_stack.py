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

from scene.cli.main import main
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


def test_printed_commands_find_the_stack_from_its_folder(stack: StackInfo, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    (repo / ".state").symlink_to(stack.state_dir)  # the repo root as make run leaves it
    run_id = str(uuid.uuid4())
    # Prefect, with the stack's auth string: in a fresh process (Prefect reads its settings when first imported)
    watching = _start(["runs", "watch", run_id, "--timeout", "30"], repo, _bare_env(tmp_path / "prefect-home"))
    try:
        # S3 in this process, with a fresh shell's environment (scene reads its settings per command)
        for k in [k for k in os.environ if k.startswith(("AWS_", "PREFECT_", "SCENE_"))]:
            monkeypatch.delenv(k)
        monkeypatch.chdir(repo)
        assert main(["models", "list", "--json"]) == 0, capsys.readouterr().err  # with the stack's credentials
        assert set(json.loads(capsys.readouterr().out)) == {"versions", "champions"}
        assert main(["runs", "show", run_id]) == 1  # reached the artifact bucket: the run is just not there
        assert f"no comparison for run '{run_id}'" in capsys.readouterr().err
        monkeypatch.chdir(elsewhere)  # no state folder here: no credentials, and the message says which to set
        assert main(["runs", "show", run_id]) == 1 and "no S3 credentials" in capsys.readouterr().err
        watched = _finish(watching)
    finally:
        watching.kill()  # (already ended unless an assertion above failed)
        watching.communicate()
    assert watched.returncode == 1 and f"{run_id}: not found" in watched.stderr, watched.stderr
