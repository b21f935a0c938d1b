"""Architecture rules: scene/ never imports Prefect; tasks/ never imports flows, boto3/botocore, tempfile or shutil and
does no file I/O itself (no open(), no Path read/write/mkdir/unlink, no to_csv/read_csv of a path); the training
flows (train_all, train_backbone, retrain) import from scene only the pipeline API (PIPELINE_API below).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_scene_library_never_imports_prefect() -> None:
    offenders = [p.name for p in (REPO / "scene").rglob("*.py") if "prefect" in _imports(p)]
    assert offenders == [], f"scene/ must not import prefect: {offenders}"


def test_tasks_do_not_import_flows() -> None:
    offenders = [p.name for p in (REPO / "tasks").rglob("*.py") if "flows" in _imports(p)]
    assert offenders == []


# what a training flow may use of the library: the typed parameters and constants, the data and result types, the
# registry's public API, the stages, and the data-scope check of its URI parameters
PIPELINE_API = {"scene.params", "scene.metadata", "scene.dataset", "scene.experiment", "scene.registry",
                "scene.stages", "scene.data_scope"}
TRAINING_FLOWS = ("train_all.py", "train_backbone.py", "retrain.py")
NO_IMPORT_IN_TASKS = {"boto3", "botocore", "tempfile", "shutil", "flows"}
FILE_METHODS = {"read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink", "touch", "rmdir", "open"}


def _scene_modules(path: Path) -> set[str]:
    """The scene modules a file imports (``from scene import x`` counts as ``scene.x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "scene":
            out |= {f"scene.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scene."):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("scene")}
    return out


def _file_io(path: Path) -> list[str]:
    """``line: call`` for every file access a module makes itself (``scene.storage`` calls do not count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id == "open":
            found.append(f"{node.lineno}: open()")
        elif isinstance(f, ast.Attribute) and f.attr in FILE_METHODS and not (
                isinstance(f.value, ast.Name) and f.value.id == "storage"):
            found.append(f"{node.lineno}: .{f.attr}()")
        elif isinstance(f, ast.Attribute) and f.attr == "to_csv" and (node.args or any(
                k.arg == "path_or_buf" for k in node.keywords)):
            found.append(f"{node.lineno}: .to_csv(path)")
        elif isinstance(f, ast.Attribute) and f.attr == "read_csv" and not (node.args and isinstance(
                node.args[0], ast.Call) and getattr(node.args[0].func, "attr", "") == "BytesIO"):
            found.append(f"{node.lineno}: read_csv(path)")
    return found


def test_tasks_import_no_s3_client_or_file_helpers_and_do_no_file_io() -> None:
    imports = {p.name: _imports(p) & NO_IMPORT_IN_TASKS for p in (REPO / "tasks").rglob("*.py")}
    assert {k: v for k, v in imports.items() if v} == {}
    io = {p.name: _file_io(p) for p in (REPO / "tasks").rglob("*.py")}
    assert {k: v for k, v in io.items() if v} == {}, "tasks/ must leave file I/O to scene/"


def test_training_flows_import_only_the_pipeline_api_from_scene() -> None:
    extra = {f: sorted(_scene_modules(REPO / "flows" / f) - PIPELINE_API) for f in TRAINING_FLOWS}
    assert {f: m for f, m in extra.items() if m} == {}


def test_only_train_backbone_sequences_the_stages() -> None:
    """The stage tasks (tasks/training.py) are called from flows/train_backbone.py and nowhere else in flows/."""
    callers = {p.name for p in (REPO / "flows").glob("*.py") if "training." in p.read_text()}
    assert callers == {"train_backbone.py"}
    assert not (REPO / "flows" / "steps.py").exists()


def test_the_rule_checkers_catch_what_they_forbid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import tempfile\nfrom scene import storage, train\nopen('x')\np.write_text('y')\n"
                   "df.to_csv('z.csv')\npd.read_csv('z.csv')\nstorage.read_bytes('ok')\n")
    assert _imports(bad) & NO_IMPORT_IN_TASKS == {"tempfile"}
    assert _scene_modules(bad) - PIPELINE_API == {"scene.storage", "scene.train"}
    assert [x.split(": ")[1] for x in _file_io(bad)] == ["open()", ".write_text()", ".to_csv(path)", "read_csv(path)"]
