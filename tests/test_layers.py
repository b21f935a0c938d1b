"""Architecture rules: only the operations wing (scene/ops) imports Prefect, never the ML library (PREFECT_FREE) nor
the top level or the CLI; no import cycle among scene modules; scene/ is wings (WINGS
below), each importing only the wings before it, with only shared constants and settings at the top level (so the
CLI is imported by no other part of scene, nor by flows/ or tasks/); tasks/ never imports flows, boto3/botocore,
tempfile or shutil and does no file I/O itself (no open(), no Path read/write/mkdir/unlink, no to_csv/read_csv of a
path); the training flows (train_all, train_backbone, retrain) import from scene only the pipeline API (PIPELINE_API).
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


# the wings of scene/ that may import Prefect: operations code (the stack, events, watch) talks to Prefect through
# its own client; the ML library (data, model, evaluation, registry, train, audit), the top level and the CLI do not
PREFECT_WINGS = {"ops"}


def _prefect_importers(root: Path = REPO) -> list[str]:
    """scene modules outside :data:`PREFECT_WINGS` that import prefect (at any depth of the file)."""
    return sorted(str(p.relative_to(root)) for p in (root / "scene").rglob("*.py")
                  if "prefect" in _imports(p) and p.relative_to(root / "scene").parts[0] not in PREFECT_WINGS)


def test_only_the_ops_wing_imports_prefect() -> None:
    assert _prefect_importers() == [], f"only scene/{'|'.join(sorted(PREFECT_WINGS))} may import prefect"


def test_tasks_do_not_import_flows() -> None:
    offenders = [p.name for p in (REPO / "tasks").rglob("*.py") if "flows" in _imports(p)]
    assert offenders == []


# what a training flow may use of the library: the typed parameters and constants, the data and result types, the
# registry's public API, the stages, and the data-scope check of its URI parameters
PIPELINE_API = {"scene.train.params", "scene.metadata", "scene.data.dataset", "scene.train.experiment",
                "scene.registry", "scene.train.stages", "scene.data.scope",
                "scene.ops.gpus"}  # the job variables that pin a dispatched run to its GPU (pure, no I/O)
TRAINING_FLOWS = ("train_all.py", "train_backbone.py", "retrain.py", "extract_chunk.py")
NO_IMPORT_IN_TASKS = {"boto3", "botocore", "tempfile", "shutil", "flows"}
FILE_METHODS = {"read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink", "touch", "rmdir", "open"}


def _is_module(name: str, root: Path = REPO) -> bool:
    """Whether dotted ``name`` is a module or package file under ``root``."""
    rel = Path(*name.split("."))
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _scene_modules(path: Path, root: Path = REPO) -> set[str]:
    """The scene modules a file imports, at any depth of the file (``from scene.data import storage`` counts as
    ``scene.data.storage``; ``from scene import x`` as ``scene.x``; relative imports are resolved too)."""
    out = set()
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1]) if path.is_relative_to(root) else ""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base != "scene" and not base.startswith("scene."):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if base == "scene" or _is_module(sub, root) else base)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name == "scene" or a.name.startswith("scene.")}
    return out


def _file_io(path: Path) -> list[str]:
    """``line: call`` for every file access a module makes itself (``scene.data.storage`` calls do not count)."""
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
    """The stage tasks (tasks/training.py) are called from flows/train_backbone.py (every stage) and
    flows/extract_chunk.py (prepare + extract of one chunk of the images: sharded extraction), nowhere else."""
    callers = {p.name for p in (REPO / "flows").glob("*.py") if "training." in p.read_text()}
    assert callers == {"train_backbone.py", "extract_chunk.py"}
    assert "training.fit" not in (REPO / "flows" / "extract_chunk.py").read_text()
    assert not (REPO / "flows" / "steps.py").exists()


def test_the_prefect_rule_catches_an_ml_wing_or_the_top_level(tmp_path: Path) -> None:
    files = {"scene/ops/w.py": "def f():\n    from prefect.client.orchestration import get_client\n",
             "scene/data/d.py": "import prefect.settings\n", "scene/train/t.py": "def f():\n    import prefect\n",
             "scene/api.py": "from prefect import flow\n", "scene/model/m.py": "import prefectlike\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert _prefect_importers(tmp_path) == ["scene/api.py", "scene/data/d.py", "scene/train/t.py"]


def test_the_rule_checkers_catch_what_they_forbid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import tempfile\nfrom scene.data import storage\nfrom scene import train\nopen('x')\n"
                   "p.write_text('y')\n"
                   "df.to_csv('z.csv')\npd.read_csv('z.csv')\nstorage.read_bytes('ok')\n")
    assert _imports(bad) & NO_IMPORT_IN_TASKS == {"tempfile"}
    assert _scene_modules(bad) - PIPELINE_API == {"scene.data.storage", "scene.train"}
    assert [x.split(": ")[1] for x in _file_io(bad)] == ["open()", ".write_text()", ".to_csv(path)", "read_csv(path)"]


# the wings of scene/, lowest first: a wing imports only the top level and the wings before it
WINGS = ("data", "model", "evaluation", "registry", "train", "audit", "ops", "cli")
TOP_LEVEL = {"scene", "scene.settings", "scene.errors", "scene.metadata"}  # what every wing shares
FACADE = {"scene.api"}  # the Python API (scene.train/evaluate/predict): above every wing; only the CLI uses it
FACADE_USERS = {"scene.train"}  # ...and the package scene.train, which is callable: scene.train(...) is scene.api.train


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """scene module -> the scene modules it imports (function-level imports included)."""
    files = {_module_name(p, root): p for p in (root / "scene").rglob("*.py")}
    return {m: {d for d in _scene_modules(p, root) if d in files and d != m} for m, p in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as ``[a, b, ..., a]``, or ``[]`` when there is none (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return []


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else "top"


def _wing_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a later wing or of the FACADE from a wing other than the CLI, and every flat
    module outside the wings, TOP_LEVEL and FACADE."""
    rank = {w: i for i, w in enumerate(WINGS)}
    bad = [f"{m} is neither in a wing nor in TOP_LEVEL" for m in graph
           if _wing(m) == "top" and m not in TOP_LEVEL | FACADE]
    for m, deps in graph.items():
        bad += [f"{m} -> {d}" for d in deps & FACADE if _wing(m) not in ("top", "cli") and m not in FACADE_USERS]
        if m in FACADE:
            continue
        for d in deps:
            if _wing(d) != "top" and (_wing(m) == "top" or rank[_wing(d)] > rank[_wing(m)]):
                bad.append(f"{m} -> {d}")
    return sorted(bad)


def test_no_import_cycle_among_scene_modules() -> None:
    cycle = _cycle(_import_graph())
    assert cycle == [], "import cycle: " + " -> ".join(cycle)


def test_each_wing_imports_only_the_wings_before_it() -> None:
    assert _wing_violations(_import_graph()) == [], f"wing order: {' < '.join(WINGS)}"
    packages = sorted(p.name for p in (REPO / "scene").iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(WINGS)


def test_cli_is_imported_by_nobody_but_itself() -> None:
    users = [str(p.relative_to(REPO)) for d in ("scene", "flows", "tasks") for p in (REPO / d).rglob("*.py")
             if not p.is_relative_to(REPO / "scene" / "cli")
             and any(m == "scene.cli" or m.startswith("scene.cli.") for m in _scene_modules(p))]
    assert users == []


def test_the_graph_checkers_catch_cycles_and_wing_breaches(tmp_path: Path) -> None:
    files = {"scene/__init__.py": "", "scene/settings.py": "", "scene/flat.py": "",
             "scene/data/__init__.py": "", "scene/data/a.py": "from scene.model import b\n",
             "scene/model/__init__.py": "", "scene/model/b.py": "def f():\n    from scene.data.a import x\n",
             "scene/cli/__init__.py": "", "scene/cli/c.py": "from . import d\n",
             "scene/cli/d.py": "from scene.settings import S\n",
             "scene/api.py": "from scene.cli import d\nfrom scene.data import a\n",
             "scene/model/c.py": "def f():\n    import scene.api\n"}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = _import_graph(tmp_path)
    assert graph["scene.cli.c"] == {"scene.cli.d"} and graph["scene.cli.d"] == {"scene.settings"}
    assert _cycle(graph) == ["scene.data.a", "scene.model.b", "scene.data.a"]
    assert _wing_violations(graph) == ["scene.data.a -> scene.model.b",
                                      "scene.flat is neither in a wing nor in TOP_LEVEL",
                                      "scene.model.c -> scene.api"]
    (tmp_path / "scene/data/a.py").write_text("")
    assert _cycle(_import_graph(tmp_path)) == []
