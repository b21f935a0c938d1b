"""A quiet CLI: normal commands write nothing to stderr but real messages; ``--verbose`` shows TensorFlow's start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scene.cli import quiet
from scene.data.synth import make_synthetic

SCENE = [sys.executable, "-m", "scene.cli.main"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a fresh shell has it
    return subprocess.Popen([*SCENE, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return _finish(_start(args, cwd))


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("q") / "tiny", 8, size=32, seed=3)


def test_help_and_validate_write_nothing_to_stderr(tiny: Path, tmp_path: Path) -> None:
    helped = _run(["--help"], tmp_path)
    assert helped.returncode == 0 and "--verbose" in helped.stdout
    assert helped.stderr == ""
    checked = _run(["data", "validate", str(tiny)], tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == ""  # no progress bar when stderr is not a terminal, no TensorFlow noise


def test_tensorflow_start_up_noise_is_filtered_and_verbose_shows_it(tiny: Path, tmp_path: Path) -> None:
    """`scene predict` imports TensorFlow before failing on the missing model: only the error line is left."""
    model = tmp_path / "missing" / "model.keras"
    args = ["predict", str(tiny), "--model", str(model), "--out", str(tmp_path / "p.csv")]
    quiet_proc, loud_proc = _start(args, tmp_path), _start(["--verbose", *args], tmp_path)  # side by side
    quiet_run, loud = _finish(quiet_proc), _finish(loud_proc)
    assert quiet_run.returncode == 1
    assert quiet_run.stderr.splitlines() == [line for line in quiet_run.stderr.splitlines()
                                             if line.startswith("error: ")], quiet_run.stderr
    assert "missing/model.keras" in quiet_run.stderr
    assert loud.returncode == 1
    assert "absl::InitializeLog() is called are written to STDERR" in loud.stderr, loud.stderr


def test_noise_filter_keeps_real_messages() -> None:
    lines = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "E0000 00:00:1.0 123 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
             "I0000 00:00:1.0 123 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU not used.",
             "/x.py:3: UserWarning: a real warning", "E0000 something else went wrong"]
    assert quiet.keep(lines) == ["/x.py:3: UserWarning: a real warning", "E0000 something else went wrong"]
