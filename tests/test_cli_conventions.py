"""The ``scene`` CLI's conventions: positional inputs, one name per concept, comma lists, the 0.1 spellings kept
(deprecated, one stderr line), exit codes (1 runtime, 2 usage), ``--version``, ``--json``, and the local stack found
by itself. Parse-level and cheap: no training, no stack (a fake state folder where one is needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import scene
from scene.cli import common
from scene.cli.main import build_parser, main
from scene.data.synth import make_synthetic

# (0.1 spelling, the new one): each old form parses to the same namespace as the new one
OLD_NEW = [
    (["validate", "--data", "d"], ["data", "validate", "d"]),
    (["validate", "d", "--classes", "a,b"], ["data", "validate", "d", "--classes", "a,b"]),
    (["train", "--data", "d", "--out", "o", "--backbone", "vgg16", "--backbone", "resnet50"],
     ["train", "d", "--out", "o", "--backbones", "vgg16,resnet50"]),
    (["evaluate", "--model", "m.keras", "--data", "d", "--out", "o"], ["evaluate", "m.keras", "d", "--out", "o"]),
    (["evaluate", "m.keras", "--data", "d"], ["evaluate", "m.keras", "d"]),
    (["evaluate", "--model", "m.keras", "d"], ["evaluate", "m.keras", "d"]),
    (["predict", "--data", "d", "--out", "p.csv"], ["predict", "d", "--out", "p.csv"]),
    (["data", "synth", "--out", "o", "--per-class", "2"], ["data", "synth", "o", "--per-class", "2"]),
    (["data", "upload", "--src", "s", "--name", "n", "--ready"], ["data", "upload", "s", "--name", "n", "--ready"]),
    (["data", "name", "--src", "s"], ["data", "name", "s"]),
    (["models", "list", "--data", "s3://b/d/"], ["models", "list", "--dataset", "s3://b/d/"]),
    (["models", "rollback", "--data", "s3://b/d/"], ["models", "rollback", "--dataset", "s3://b/d/"]),
    (["stack", "up", "--pool", "default", "--pool", "gpu"], ["stack", "up", "--pools", "default,gpu"]),
    (["weights", "mirror", "--backbone", "vgg16"], ["weights", "mirror", "--backbones", "vgg16"]),
    (["audit", "labels", "--data", "d", "--backbone", "b", "--out", "o"],
     ["audit", "labels", "d", "--backbone", "b", "--out", "o"]),
    (["audit", "drift", "--data", "d", "--new", "n", "--backbone", "b", "--out", "o"],
     ["audit", "drift", "d", "n", "--backbone", "b", "--out", "o"]),
]


@pytest.mark.parametrize(("old", "new"), OLD_NEW, ids=[" ".join(o[:2]) + f"-{i}" for i, (o, _) in
                                                       enumerate(OLD_NEW)])
def test_old_spelling_parses_to_the_new_namespace_and_says_so(old: list[str], new: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    want = vars(build_parser().parse_args(new))
    assert capsys.readouterr().err == ""  # the new spelling: no notice
    got = vars(build_parser().parse_args(old))
    assert got == want
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("deprecated: ") and f"is now `scene {new[0]}" in err[0], err


def test_an_input_given_both_ways_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["evaluate", "m.keras", "d", "--data", "other"])
    assert exit_.value.code == 2 and "DATA given twice" in capsys.readouterr().err


def test_each_stack_subcommand_has_only_its_own_flags() -> None:
    p = build_parser()
    assert p.parse_args(["stack", "up", "--s3-port", "9001", "--no-events"]).s3_port == 9001
    for argv in (["stack", "down", "--s3-port", "9000"], ["stack", "env", "--pools", "a"],
                 ["stack", "status", "--no-events"], ["stack", "down", "up"]):
        with pytest.raises(SystemExit) as exit_:
            p.parse_args(argv)
        assert exit_.value.code == 2, argv
    assert p.parse_args(["stack", "down", "--state", "s"]).state == "s"
    assert p.parse_args(["--state", "s", "stack", "down"]).state == "s"


def test_usage_errors_exit_2_runtime_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["train", str(tmp_path), "--out", "o", "--no-such-flag"], ["train", "--out", "o"], ["validate"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    capsys.readouterr()
    assert main(["data", "validate", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [e for e in err if e.startswith("error: ")] and "missing" in err[-1], err  # no traceback
    assert main(["data", "validate", str(tmp_path / "missing"), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.splitlines()[-1].startswith("error: ")


def test_version_is_cheap() -> None:
    code = ("import sys\nfrom scene.cli.main import main\ntry:\n    main(['--version'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nprint(sorted(m for m in ('tensorflow', 'keras', 'pandas', 'prefect', "
            "'scipy', 'great_expectations') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.splitlines() == [f"scene {scene.__version__}", "[]"], done


def test_json_is_one_document_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic(tmp_path / "d", 4, size=32, seed=1)
    assert main(["data", "validate", str(data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # the whole of stdout is one document
    assert doc["success"] is True and doc["images"] == 24 and len(doc["classes"]) == 6
    one = tmp_path / "one"
    one.mkdir()
    (data / "sea").rename(one / "sea")  # a single class fails validation
    assert main(["data", "validate", str(one), "--json"]) == 1  # fails validation: still a document, then exit 1
    out = capsys.readouterr()
    assert json.loads(out.out)["success"] is False and "error: validation failed:\n  " in out.err
    assert main(["stack", "status", "--state", str(tmp_path / "no-stack"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["exists"] is False


def test_audit_help_states_the_library_defaults() -> None:
    from scene.audit.drift import ALPHA
    from scene.audit.duplicates import DEFAULT_THRESHOLD, MAX_LEAK_SHARE

    audit = build_parser()._subparsers._group_actions[0].choices["audit"]._subparsers._group_actions[0].choices
    helps = {a.dest: a.help for p in audit.values() for a in p._actions}
    assert f"(default {DEFAULT_THRESHOLD:g})" in helps["threshold"]
    assert f"(default {MAX_LEAK_SHARE:g})" in helps["max_leak_share"] and f"(default {ALPHA:g})" in helps["alpha"]


# ------------------------------------------------------------------------------- the local stack, found by itself


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A state folder as `scene stack up` leaves it (stack.json, credentials.json), with nothing listening; the
    environment as a fresh shell in the repo root has it (no AWS_*/PREFECT_* set, no Prefect profile)."""
    state = tmp_path / ".state"
    state.mkdir()
    port = _free_port()
    (state / "stack.json").write_text(json.dumps({
        "s3_port": port, "prefect_port": port, "region": "us-east-1", "data_bucket": "fake-data",
        "artifact_bucket": "fake-artifacts", "data_prefix": "datasets/", "pools": [], "workers": {}}))
    creds = {"access_key": "fakeaccess123", "secret_key": "fake-secret-" + "x" * 20,
             "prefect_auth_string": "scene:fake"}
    (state / "credentials.json").write_text(json.dumps(creds))
    os.chmod(state / "credentials.json", 0o600)
    for k in [k for k in os.environ if k.startswith(("AWS_", "PREFECT_", "SCENE_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.chdir(tmp_path)
    return {"state": state, "port": port, "creds": creds}


def test_stack_variables_fill_only_what_the_environment_lacks(fake_stack: dict[str, object],
                                                             tmp_path: Path) -> None:
    port, creds = fake_stack["port"], fake_stack["creds"]
    found = common.stack_variables(".state", {})
    assert found["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
    assert found["AWS_ACCESS_KEY_ID"] == creds["access_key"] and found["SCENE_ARTIFACT_BUCKET"] == "fake-artifacts"
    assert found["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
    assert found["PREFECT_API_AUTH_STRING"] == "scene:fake"
    # the user's own S3 store wins as a group (no stack key paired with another endpoint); Prefect still found
    mine = common.stack_variables(".state", {"AWS_ENDPOINT_URL": "https://s3.example"})
    assert not {"AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "SCENE_DATA_BUCKET"} & set(mine)
    assert mine["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"
    # a Prefect API set by `prefect config set` (the active profile) wins too
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "work"\n[profiles.work]\nPREFECT_API_URL = "http://x:4200/api"\n')
    assert not set(common.PREFECT_VARS) & set(common.stack_variables(".state", {}))
    assert common.stack_variables(".state", {"AWS_PROFILE": "p", "PREFECT_API_URL": "http://y/api"}) == {}
    config = tmp_path / "scene.yaml"  # keys in SCENE_CONFIG's file count as the user's own too
    config.write_text("aws_access_key_id: mine\naws_secret_access_key: mine-too\n")
    assert "AWS_ENDPOINT_URL" not in common.stack_variables(".state", {"SCENE_CONFIG": str(config)})
    assert common.stack_variables(str(tmp_path / "elsewhere"), {}) == {}  # no stack there: nothing


def test_a_command_runs_with_the_stack_variables_and_leaves_the_environment_alone(
        fake_stack: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    """Inside a command that needs the stores the stack's variables are set; afterwards the environment is as it was
    (tests/integration/test_cli_stack.py runs the printed commands against a real stack)."""
    before = dict(os.environ)
    args = build_parser().parse_args(["runs", "show", "0123"])
    with common.stack_environment(args) as found:
        assert os.environ["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{fake_stack['port']}"
        assert os.environ["PREFECT_API_URL"] == f"http://127.0.0.1:{fake_stack['port']}/api" and found
    assert dict(os.environ) == before
    local = build_parser().parse_args(["train", "photos", "--out", "o"])  # local files only: the stack is not used
    with common.stack_environment(local) as found:
        assert found == {} and "AWS_ENDPOINT_URL" not in os.environ
    # main applies it (--verbose says so)
    assert main(["data", "upload", "missing-folder", "--name", "x", "--verbose"]) == 1
    err = capsys.readouterr().err
    assert f"using the local stack in .state: S3 http://127.0.0.1:{fake_stack['port']}, Prefect" in err, err
    assert not set(common.stack_variables(".state", {})) & set(os.environ)  # (imports may set others: KMP_*)
