"""The user docs stay true: short README, commands that parse in today's spelling, make targets, links, paths.

Cheap (no stack): it reads the Markdown files, asks the CLI's own parser and the Makefile, and runs the README's
Python example on a tiny generated dataset.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest

from scene.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "deployments" / "README.md"]
MAX_README_LINES = 260
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path, lang: str | None = None) -> list[str]:
    """The fenced code blocks of a Markdown file (only those tagged ``lang`` when given)."""
    return [body for tag, body in FENCE.findall(path.read_text()) if lang is None or tag == lang]


def prose(path: Path) -> str:
    """A Markdown file without its fenced code blocks."""
    return FENCE.sub("", path.read_text())


# --- scene commands -------------------------------------------------------------------------------------------

def _strip_comment(line: str) -> str:
    return re.split(r"\s#\s|\s#$", line, maxsplit=1)[0]


def _first_choice(group: str) -> str:
    """``[--name N | --dest URI]`` -> ``--name N``; ``imagenet|none|PATH`` -> ``imagenet``."""
    return group.split(" | ")[0]


def synopsis_to_argv(command: str) -> list[str]:
    """A documented ``scene …`` line as an argv: every optional part given, the first of each alternative."""
    command = re.sub(r"\[([^\[\]]*)\]", lambda m: _first_choice(m.group(1)), command)
    command = re.sub(r"<[^<>\s]+>", "x", command)  # <flow-run-id>
    argv = [re.sub(r"^([^|=]+)\|\S*$", r"\1", a) if not a.startswith("s3://") else a
            for a in shlex.split(command)][1:]
    # an option's placeholder value (--epochs N, --interval S) becomes a value every type accepts
    return [("1" if re.fullmatch(r"[A-Z][A-Z_]*", a) and i and argv[i - 1].startswith("--") else a)
            for i, a in enumerate(argv)]


def scene_commands(path: Path) -> list[str]:
    """Every ``scene …`` command in the code blocks of ``path`` (also inside ``$(…)``, after ``.venv/bin/``)."""
    found = []
    for block in code_blocks(path):
        for line in block.replace("\\\n", " ").splitlines():  # continuation lines joined
            line = _strip_comment(line)
            for m in re.finditer(r"(?:^|[\s(/])(scene(?:\s+[^\s)#;&]+)+)", line):
                cmd = m.group(1)
                if not re.match(r"scene\s+-*[a-z]", cmd):
                    continue
                found.append(cmd.strip())
    return found


DOC_COMMANDS = [(p.relative_to(ROOT).as_posix(), c) for p in DOCS for c in scene_commands(p)]


def parse(argv: list[str]) -> tuple[int, str]:
    """Run the CLI's parser on ``argv``: (exit status, stderr); 0 when it parsed."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, err.getvalue()


def test_the_docs_show_scene_commands() -> None:
    files = {f for f, _ in DOC_COMMANDS}
    assert "README.md" in files and len(DOC_COMMANDS) >= 30, DOC_COMMANDS


@pytest.mark.parametrize(("doc", "command"), DOC_COMMANDS, ids=[f"{f}: {c}" for f, c in DOC_COMMANDS])
def test_every_documented_scene_command_parses_in_todays_spelling(doc: str, command: str) -> None:
    code, err = parse(synopsis_to_argv(command))
    assert code == 0, f"{doc}: `{command}` does not parse: {err.strip()}"
    assert "deprecated" not in err, f"{doc}: `{command}` uses a deprecated spelling: {err.strip()}"


def test_the_command_check_catches_a_bad_and_a_deprecated_spelling() -> None:
    assert parse(synopsis_to_argv("scene train --nope DATA --out x"))[0] == 2
    assert "deprecated" in parse(synopsis_to_argv("scene train --data DATA --out x --backbones mobilenetv2"))[1]


# --- make targets ---------------------------------------------------------------------------------------------

def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*:(?!=)", text, re.M))


def test_every_make_target_in_the_readme_exists() -> None:
    targets = make_targets()
    used = set(re.findall(r"(?<![\w/.-])make\s+([a-z][\w-]*)", README.read_text()))
    missing = sorted(used - targets)
    assert used and not missing, f"README uses make targets the Makefile does not define: {missing}"


# --- links and paths ------------------------------------------------------------------------------------------

def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    out = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", prose(path), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        out.add(slug)
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            bad.append(f"{target} (no heading #{fragment} in {dest.name})")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc: Path) -> None:
    assert not broken_links(doc), f"{doc.relative_to(ROOT)}: broken links {broken_links(doc)}"


CODE_PATH = re.compile(r"`((?:scene|tests|flows|tasks|benchmarks|deployments)/[\w./-]+\.(?:py|json|yaml|txt|sh))"
                       r"(?:::(\w+))?")


def missing_paths(path: Path) -> list[str]:
    """Repository files (and ``file.py::test_name``) the doc names in backticks that do not exist."""
    bad = []
    for file, test in CODE_PATH.findall(path.read_text()):
        src = ROOT / file
        if not src.exists():
            bad.append(file)
        elif test and not re.search(rf"def {test}\(", src.read_text()):
            bad.append(f"{file}::{test}")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_code_path_named_in_the_docs_exists(doc: Path) -> None:
    assert not missing_paths(doc), f"{doc.relative_to(ROOT)} names files that do not exist: {missing_paths(doc)}"


# --- the README itself ----------------------------------------------------------------------------------------

def readme_problems(text: str) -> list[str]:
    """What keeps a README from being a user's: too long, development-machine paths, dates (a diary)."""
    problems = []
    if len(text.splitlines()) > MAX_README_LINES:
        problems.append(f"{len(text.splitlines())} lines (at most {MAX_README_LINES}: details belong in docs/)")
    if "../shared" in text:
        problems.append(f"{text.count('../shared')} paths to ../shared (only on the development machine)")
    dates = re.findall(r"\b20\d\d-\d\d-\d\d\b", text)
    if dates:
        problems.append(f"dates {sorted(set(dates))} (a diary belongs in git log)")
    return problems


def test_the_readme_is_short_and_has_no_workplace_paths_or_dates() -> None:
    assert not readme_problems(README.read_text()), readme_problems(README.read_text())


def test_every_scene_variable_the_docs_name_is_one_the_code_reads() -> None:
    from scene.settings import documented_variables

    known = documented_variables()
    named = {(p.relative_to(ROOT).as_posix(), v)
             for p in DOCS for v in re.findall(r"\bSCENE_[A-Z0-9_]+", p.read_text())}
    unknown = sorted((doc, v) for doc, v in named if v not in known)
    assert named and not unknown, f"variables no code reads (see scene/settings.py): {unknown}"


@pytest.mark.slow  # trains a MobileNetV2 head: ~30 s of CPU, so not in make test-unit
def test_the_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's notebook example as written, on tiny hue images in the folders it names, with an offline
    "imagenet" (tests.support.weights) and the caches under tmp_path."""
    from scene.metadata import CLASS_NAMES, DEFAULT_IMAGE_SIZE
    from scene.model.backbones import get_spec
    from tests.support.hues import draw_hues
    from tests.support.weights import use_imagenet_cache

    (example,) = code_blocks(README, "python")
    for folder, per_class, seed in (("photos", 4, 1), ("photos_test", 2, 2), ("new_photos", 1, 3)):
        draw_hues(tmp_path / folder, 0, size=32, per_class=per_class, seed=seed)
        for cls in CLASS_NAMES[2:]:  # two classes keep it cheap; named as a user's (classes = the folder names)
            shutil.rmtree(tmp_path / folder / cls)
        for cls, mine in zip(CLASS_NAMES[:2], ("cat", "dog"), strict=True):
            (tmp_path / folder / cls).rename(tmp_path / folder / mine)
    # calibrated at 32 px (cheap) under the Keras file name the example's default 150 px also loads
    assert use_imagenet_cache(tmp_path, monkeypatch).name == get_spec("mobilenetv2").weights_file(DEFAULT_IMAGE_SIZE)
    monkeypatch.setenv("SCENE_INFERENCE_RUNTIME", "tensorflow")  # the cheapest here, and not what this tests
    monkeypatch.setenv("SCENE_FEATURE_CACHE", str(tmp_path / "features"))
    monkeypatch.setenv("SCENE_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.chdir(tmp_path)
    names: dict[str, object] = {}
    exec(compile(example, str(README), "exec"), names)

    run, scores, preds = names["run"], names["scores"], names["preds"]
    assert list(run.table["backbone"]) == ["mobilenetv2"]
    assert Path(run.best.model_path).is_file() and not run.best.random_init and run.best.status == "ok"
    assert scores["n"] == 4 and scores["accuracy"] > 0.5
    assert len(preds) == 2 and {"image", "label", "confidence", "p_cat", "p_dog"} <= set(preds.columns)
    assert (preds["label"] != "").all()
