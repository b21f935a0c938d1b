"""Architecture rules: the library never imports Prefect; flows and tasks stay thin."""

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
