"""Where `scene data upload` and `make run DATA=...` put a dataset: its own name, never merged into demo/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scene.cli.main import main
from scene.cli.ops import dataset_name

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("src", "name", "expected"),
    [
        ("/data/intel", None, "intel"),
        ("/data/My Scenes!", None, "my-scenes"),
        ("/data/seg_train/", None, "seg_train"),
        ("/data/..hidden..", None, "hidden"),
        ("/data/Été 2024", None, "ete-2024"),
        ("/data/intel", "intel-v2", "intel-v2"),
        (None, None, "demo"),
        (None, "", "demo"),
    ],
)
def test_dataset_name_derives_from_the_folder_or_takes_name(src: str | None, name: str | None,
                                                            expected: str) -> None:
    assert dataset_name(src, name) == expected


@pytest.mark.parametrize("name", ["../demo", "a/b", "Intel", ".", "-x", "x" * 64])
def test_bad_explicit_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(ValueError, match=r"--name .*a-z, 0-9"):
        dataset_name("/data/intel", name)


def test_a_folder_name_with_nothing_usable_asks_for_name() -> None:
    with pytest.raises(ValueError, match=r"pass --name NAME"):
        dataset_name("/data/!!!")


def test_relative_folder_resolves_to_its_real_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "Coast Photos"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert dataset_name(".") == "coast-photos"


def test_data_name_command_prints_the_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "name", "/x/Forest Set"]) == 0
    assert capsys.readouterr().out.strip() == "forest-set"
    assert main(["data", "name", "--name", "Bad/Name"]) == 1  # a runtime error (2: usage errors only)
    assert "--name 'Bad/Name'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["DATA=/tmp/Holiday Pics"], "holiday-pics"), (["DATA=/tmp/x", "NAME=coast"], "coast"), ([], "demo")],
)
def test_make_run_trains_the_uploaded_dataset_name(args: list[str], expected: str) -> None:
    """`make run` takes its dataset name from `make dataset-name`'s command, used for upload and training."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "dataset-name", f"BIN={Path(sys.executable).parent}",
                          *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
    makefile = (REPO / "Makefile").read_text()
    run = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "name=$$($(DATASET_NAME))" in run and '--name "$$name"' in run and "$$SCENE_DATA_PREFIX$$name" in run
    assert "--name demo" not in run and "PREFIX\"'demo/" not in run
