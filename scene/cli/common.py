"""What the ``scene`` command modules share, so that none of them imports :mod:`scene.cli.main` (no import cycle):
the parser class that keeps the 0.1 spellings working for one release (:class:`SceneParser`), ``--json`` output
(:func:`emit`), finding the local stack by itself (:func:`stack_environment`), errors, settings, the S3 client,
progress bars and loading a dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO

DEFAULT_STATE = ".state"
CLASSES_HELP = ("comma-separated class names (default: the Intel classes when the folders are those, else the "
                "sorted folder names)")


class CliError(RuntimeError):
    """A user-facing error: printed without a traceback."""


# ------------------------------------------------------------------------------------------ old spellings (0.1)


def deprecated(pairs: Sequence[tuple[str, str]]) -> str:
    """The one stderr line a command given in 0.1 spellings prints: each old spelling and its new form."""
    said = "; ".join(f"`{old}` is now `{new}`" for old, new in pairs)
    return f"deprecated: {said} (the old spelling{'s' if len(pairs) > 1 else ''} go{'' if len(pairs) > 1 else 'es'} " \
           "in the next release)"


def split_list(value: str) -> list[str]:
    """A comma-separated list option (``--backbones a,b``): the non-empty items, stripped."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a comma-separated list, e.g. a,b")
    return items


class Renamed(argparse.Action):
    """A hidden old option that stores into its new option's ``dest`` and prints the deprecation line.

    ``new``: the new spelling (``--backbones``). ``append``: the old option was repeated (``--backbone a
    --backbone b``); its values (comma lists too) extend the list the new comma-separated option holds.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", append: bool = False,
                 **kwargs: Any) -> None:
        self.new, self.append = new, append
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.append:
            values = [*(getattr(namespace, self.dest, None) or []), *split_list(str(values))]
        setattr(namespace, self.dest, values)
        word = "A,B" if self.append else "VALUE"
        old = f"{option_string} A {option_string} B" if self.append else f"{option_string} VALUE"
        _notices(parser).append((f"{parser.prog} {old}", f"{parser.prog} {self.new} {word}"))


def _notices(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    if not hasattr(parser, "scene_notices"):
        parser.scene_notices = []  # type: ignore[attr-defined]
    return parser.scene_notices  # type: ignore[attr-defined]


class SceneParser(argparse.ArgumentParser):
    """``argparse`` plus the 0.1 spellings, kept one release with a deprecation line on stderr.

    :meth:`positional` adds a main input (``DATA``) whose old spelling was an option (``--data``);
    ``alias_of``: this whole command is an old name (``scene validate`` for ``scene data validate``).
    """

    def __init__(self, *args: Any, alias_of: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alias_of = alias_of
        self.old_positionals: list[tuple[str, argparse.Action]] = []

    def positional(self, name: str, old: str | None = None, *, help: str, optional: bool = False,
                   **kwargs: Any) -> argparse.Action:
        """A positional ``name`` (``DATA``, stored as ``data``); ``old``: its 0.1 option (``--data``), still read."""
        dest = name.lower()
        action = self.add_argument(dest, metavar=name, help=help, nargs="?" if optional else None, **kwargs)
        if old:
            self.add_argument(old, dest=f"old_{dest}", default=None, help=argparse.SUPPRESS)
            self.old_positionals.append((old, action))
        return action

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        # an input given by its old option is not required as a positional (its usage line still says it is)
        used = [a for old, a in self.old_positionals if any(t == old or t.startswith(old + "=") for t in args)]
        saved = [(a, a.nargs, a.required) for a in used]
        for a in used:
            a.nargs, a.required = "?", False
        try:
            ns, rest = super().parse_known_args(args, namespace)
        finally:
            for a, nargs, required in saved:
                a.nargs, a.required = nargs, required
        notices = _notices(self)
        prog = self.alias_of or self.prog
        moved = []
        for old, action in self.old_positionals:
            value = getattr(ns, f"old_{action.dest}", None)
            if hasattr(ns, f"old_{action.dest}"):
                delattr(ns, f"old_{action.dest}")
            if value is None:
                continue
            if getattr(ns, action.dest, None) not in (None, action.default):
                self.error(f"{action.metavar} given twice: as the positional and as {old} (deprecated); "
                           f"pass it once, as the positional")
            setattr(ns, action.dest, value)
            moved.append((f"{old} {action.metavar}", str(action.metavar)))
        pairs = [(f"{self.prog} {' '.join(o for o, _ in moved)}", f"{prog} {' '.join(n for _, n in moved)}")] \
            if moved else ([(self.prog, prog)] if self.alias_of else [])
        pairs += list(dict.fromkeys(notices))  # a repeated option once
        notices.clear()
        if pairs:
            print(deprecated(pairs), file=sys.stderr)
        return ns, rest


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: one JSON document on stdout and nothing else there (messages stay on stderr)."""
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (for scripts)")


# the stdout --json writes to while the command's own stdout goes to stderr (see json_output)
_JSON_OUT: ContextVar[TextIO | None] = ContextVar("scene_json_out", default=None)


@contextlib.contextmanager
def json_output(enabled: bool) -> Iterator[None]:
    """With ``--json``: everything a command (or Keras' progress) prints goes to stderr; :func:`emit` to stdout."""
    if not enabled:
        yield
        return
    token = _JSON_OUT.set(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _JSON_OUT.reset(token)


def emit(a: argparse.Namespace, doc: Any, text: str | None) -> None:
    """Print ``text`` for people, or ``doc`` as one JSON document with ``--json``."""
    if getattr(a, "json", False):
        print(json.dumps(doc, indent=2, default=str), file=_JSON_OUT.get() or sys.stdout, flush=True)
    elif text is not None:
        print(text)


# --------------------------------------------------------------------------------------- the local stack


def state_dir(a: argparse.Namespace | None = None) -> str:
    """The local stack's state folder: ``--state``, else the settings' ``state_dir`` (``SCENE_STATE_DIR``), else
    ``.state``."""
    given = getattr(a, "state", None) if a is not None else None
    return given or settings_from_env().state_dir or DEFAULT_STATE


# boto3's own ways of naming credentials, besides the settings' endpoint and keys
BOTO_CHOSEN = ("AWS_PROFILE", "AWS_SESSION_TOKEN")
PREFECT_VARS = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")


def _prefect_profile_api() -> str | None:
    """``PREFECT_API_URL`` of the active Prefect profile (``prefect config set``), read without importing Prefect."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: not checked
        return None
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        doc = tomllib.loads((home / "profiles.toml").read_text())
    except (OSError, ValueError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or doc.get("active") or "ephemeral"
    return (doc.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL") or None


def stack_variables(state: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of the local stack in ``state`` (those ``scene stack env`` prints) that ``environ`` lacks.

    Empty when ``state`` holds no stack. The S3 variables come as a group, and only when the settings name no S3
    endpoint or keys of their own (environment or ``SCENE_CONFIG``) and boto3 has no profile or session token
    (:data:`BOTO_CHOSEN`); the Prefect ones only when neither the environment nor the active Prefect profile sets
    ``PREFECT_API_URL``. Explicit settings always win.
    """
    if not (Path(state).expanduser() / "stack.json").is_file():
        return {}
    from scene.ops import stack
    from scene.settings import Settings

    env = os.environ if environ is None else environ
    mine = Settings.from_env(env=dict(env))  # the environment and SCENE_CONFIG's YAML
    s3_chosen = bool(mine.s3_endpoint_url or mine.aws_access_key_id or mine.aws_secret_access_key) or any(
        env.get(k) for k in BOTO_CHOSEN)
    if s3_chosen and env.get("PREFECT_API_URL"):
        return {}

    lines = stack.env_lines(state)
    found = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    prefect_chosen = bool(env.get("PREFECT_API_URL")) or (
        "PREFECT_API_URL" in found and _prefect_profile_api() is not None)
    out = {}
    for k, v in found.items():
        if env.get(k):
            continue
        if k in PREFECT_VARS and prefect_chosen:
            continue
        if k not in PREFECT_VARS and s3_chosen:
            continue
        out[k] = v
    return out


# the namespace attributes that may hold an s3:// URI (a command reading one needs the store)
_URI_ARGS = ("data", "test", "model", "out", "cache", "weights", "new", "dest", "src")
_STACK_COMMANDS = {"runs", "models", "events", "weights"}


def needs_services(a: argparse.Namespace) -> bool:
    """Whether the command talks to S3 or Prefect: the registry, runs, events, uploads, s3:// inputs, a champion."""
    if a.command in _STACK_COMMANDS or getattr(a, "data_command", None) == "upload":
        return True
    if a.command == "predict" and not getattr(a, "model", None):
        return True  # the champion's model lives in the artifact bucket
    return any(str(getattr(a, k, None) or "").startswith("s3://") for k in _URI_ARGS)


@contextlib.contextmanager
def stack_environment(a: argparse.Namespace) -> Iterator[dict[str, str]]:
    """While a command runs: the local stack's endpoint and credentials for the variables the environment lacks.

    So ``scene runs show ID`` (as ``make run`` prints it) works from the repo root with no ``eval "$(scene stack
    env)"``. Only for commands that need S3 or Prefect (:func:`needs_services`), never for ``scene stack``; the
    environment is restored afterwards. Yields what was set (empty: nothing).
    """
    added: dict[str, str] = {}
    if a.command != "stack" and needs_services(a):
        added = stack_variables(state_dir(a))
    before = {k: os.environ.get(k) for k in added}
    os.environ.update(added)
    try:
        yield added
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------- settings, S3, data


def settings_from_env() -> Any:
    """:class:`scene.settings.Settings` from the environment (``SCENE_*``, ``AWS_*``, ``SCENE_CONFIG``)."""
    from scene.settings import Settings

    return Settings.from_env()


def s3_for(*uris: str | None) -> Any:
    """An S3 client when any argument is an s3:// URI, else None."""
    if any(u and str(u).startswith("s3://") for u in uris):
        from scene.data.storage import s3_client

        return s3_client(settings_from_env())
    return None


class Bars:
    """One tqdm progress bar per stage, fed by the library's ``progress(stage, done, total)`` callbacks."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="it", leave=True, file=sys.stderr,
                                           disable=None)  # bars on a terminal only
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[stage]  # the same stage may run again (e.g. a second split)


def load_dataset(data: str, test: str | None, classes: str | list[str] | None, bars: Bars) -> Any:
    """The dataset at ``data`` (and ``test``), its image reads shown on ``bars``."""
    from scene.data import packs
    from scene.data.dataset import build_dataset

    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else classes
    s3 = s3_for(data, test)
    packer = packs.writer_for(data, settings_from_env().artifact_bucket, s3) if s3 is not None else None
    return build_dataset(data, test, class_names=names, s3=s3, packer=packer,
                         progress=lambda d, t: bars("reading images", d, t))
