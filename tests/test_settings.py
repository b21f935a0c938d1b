"""scene.Settings on pydantic-settings: sources and precedence, clear errors, secrets, and docs/configuration.md
(current, and naming every SCENE_* variable the code reads)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scene import settings as settings_mod
from scene.settings import Settings

REPO = Path(__file__).resolve().parents[1]
CODE = ("scene", "flows", "tasks", "deployments", "Makefile", "prefect.yaml")


def test_env_wins_over_the_yaml_file_which_wins_over_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "scene.yaml"
    cfg.write_text("data_bucket: from-yaml\nartifact_bucket: art-yaml\naws_region: yaml-region\n")
    env = {"SCENE_CONFIG": str(cfg), "SCENE_DATA_BUCKET": "from-env", "AWS_DEFAULT_REGION": "default-region",
           "SCENE_WORK_DIR": ""}  # empty: unset
    s = Settings.from_env(env=env)
    assert (s.data_bucket, s.artifact_bucket, s.aws_region) == ("from-env", "art-yaml", "default-region")
    assert s.work_dir == Settings().work_dir and s.data_prefix == "datasets/"
    assert Settings.from_env(env={}, yaml_path=str(cfg)).data_bucket == "from-yaml"


def test_aws_aliases_in_order_and_scene_names_first() -> None:
    assert Settings.from_env(env={"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}).aws_region == "a"
    assert Settings.from_env(env={"SCENE_AWS_REGION": "s", "AWS_REGION": "a"}).aws_region == "s"
    s = Settings.from_env(env={"AWS_ENDPOINT_URL": "http://e", "AWS_ACCESS_KEY_ID": "k",
                               "AWS_SECRET_ACCESS_KEY": "very-secret"})
    assert (s.s3_endpoint_url, s.aws_access_key_id, s.aws_secret_access_key) == ("http://e", "k", "very-secret")
    assert "very-secret" not in repr(s) and "very-secret" not in str(s) and "aws_access_key_id" not in repr(s)


def test_constructor_reads_no_environment_and_the_object_is_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCENE_DATA_BUCKET", "from-env")
    assert Settings().data_bucket == "scene-data" and Settings.from_env().data_bucket == "from-env"
    s = Settings(data_bucket="given")
    with pytest.raises(ValueError):
        s.data_bucket = "changed"  # type: ignore[misc]
    assert s.replace(artifact_bucket="a").artifact_bucket == "a" and s.replace().data_bucket == "given"
    with pytest.raises(ValueError, match="'bucket'"):
        s.replace(bucket="x")


def test_bad_settings_files_and_values_name_the_file_and_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bucket: x\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown keys \['bucket'\]; known: \[.*'data_bucket'"):
        Settings.from_env(env={"SCENE_CONFIG": str(bad)})
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"bad.yaml: expected a mapping of setting names, got list"):
        Settings.from_env(env={}, yaml_path=str(bad))
    bad.write_text("data_bucket: 3\n")
    with pytest.raises(ValueError, match=r"setting 'data_bucket' \(settings file .*bad.yaml\): .*valid string"):
        Settings.from_env(env={}, yaml_path=str(bad))
    with pytest.raises(ValueError, match=r"missing.yaml .SCENE_CONFIG.: not found"):
        Settings.from_env(env={"SCENE_CONFIG": str(tmp_path / "missing.yaml")})


def test_the_configuration_doc_is_current() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == settings_mod.reference_markdown(), \
        "docs/configuration.md is stale: python -m scene.settings > docs/configuration.md"


def _variables_read_by_code(root: Path = REPO) -> set[str]:
    names: set[str] = set()
    for top in CODE:
        path = root / top
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                               and p.suffix in (".py", ".json", ".yaml", ".yml", ".sh", "")]
        for f in files:
            names |= set(re.findall(r"SCENE_[A-Z0-9_]+", f.read_text(errors="replace")))
    return names


def _undocumented(found: set[str], documented: set[str]) -> list[str]:
    """Names in ``found`` that ``documented`` does not list."""
    return sorted(n for n in found if n not in documented)


def test_every_scene_variable_the_code_reads_is_documented() -> None:
    documented = settings_mod.documented_variables()
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert all(f"`{v}`" in doc or f"`{v}*`" in doc for v in documented)
    assert _undocumented(_variables_read_by_code(), documented) == []


def test_the_variable_scan_finds_a_new_variable(tmp_path: Path) -> None:
    (tmp_path / "scene").mkdir()
    (tmp_path / "scene" / "x.py").write_text('os.environ.get("SCENE_NEW_KNOB")\nSCENE_DATA_BUCKET\n')
    (tmp_path / "Makefile").write_text("run:\n\tSCENE_MAKE_ONLY=1 scene train\n")
    found = _variables_read_by_code(tmp_path)
    assert found == {"SCENE_NEW_KNOB", "SCENE_DATA_BUCKET", "SCENE_MAKE_ONLY"}
    assert _undocumented(found, settings_mod.documented_variables()) == ["SCENE_MAKE_ONLY", "SCENE_NEW_KNOB"]
