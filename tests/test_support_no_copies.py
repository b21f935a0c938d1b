"""The test suite's own hygiene: helpers live once, in tests/support, and no test module imports another one."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _modules() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(), str(p)) for p in sorted(TESTS.rglob("*.py"))}


def _body(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> list[ast.stmt]:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return body


def copies(modules: dict[Path, ast.Module]) -> list[list[str]]:
    """Top-level helpers (not tests) with the same parameters and body (docstrings aside) in different files."""
    seen: dict[str, list[str]] = defaultdict(list)
    for path, tree in modules.items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) \
                    and not node.name.startswith("test_") and _body(node):
                args = ast.dump(node.args) if not isinstance(node, ast.ClassDef) else ""  # a fixture's inputs
                seen[args + ast.dump(ast.Module(body=_body(node), type_ignores=[]))].append(
                    f"{path.relative_to(TESTS)}:{node.name}")
    return [where for where in seen.values() if len({w.split(":")[0] for w in where}) > 1]


def test_no_helper_is_copied_between_test_files() -> None:
    assert copies(_modules()) == [], "move the helper to tests/support and import it from there"


def test_the_copy_check_finds_a_copy(tmp_path: Path) -> None:
    src = "def helper(x):\n    y = x + 1\n    return y\n"
    one, two = ast.parse(src), ast.parse('def other(x):\n    """Same body."""\n    y = x + 1\n    return y\n')
    assert copies({TESTS / "a.py": one, TESTS / "b.py": two}) == [["a.py:helper", "b.py:other"]]


def test_no_test_module_or_conftest_is_imported() -> None:
    """Tests import shared code from tests.support only (a conftest imported twice is two modules)."""
    bad = []
    for path, tree in _modules().items():
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                last = name.rsplit(".", 1)[-1]
                if (name.startswith("tests.") and not name.startswith("tests.support")) or last == "conftest" or \
                        (isinstance(node, ast.ImportFrom) and node.level > 0):
                    bad.append(f"{path.relative_to(TESTS)}:{node.lineno} imports {'.' * getattr(node, 'level', 0)}"
                               f"{name}")
    assert bad == []
