"""Downloading a registered model version so that what is loaded is exactly what was registered.

A version folder ``s3://.../models/<backbone>/<backbone>-<12 hex>/`` holds a ``checksums.json`` listing every
file (``[{uri, sha256, bytes}]``, written by :mod:`scene.registry`), and its name carries the first 12 hex
digits of ``model.keras``'s sha256. :func:`fetch_version` downloads only the names listed there, checks each
file's size and sha256 and ``model.keras`` against the version id, and moves the folder into place only when
everything matches; on any mismatch it raises :class:`IntegrityError` naming the object, and leaves nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scene.data import storage
from scene.errors import SceneError

CHECKSUMS = "checksums.json"
MODEL_FILE = "model.keras"
_VERSION = re.compile(r"^(?P<backbone>[A-Za-z0-9_.-]+)-(?P<hash>[0-9a-f]{12})$")


class IntegrityError(SceneError, RuntimeError):
    """A downloaded file does not match its recorded hash or size; the message names the object."""


def verify_file(path: str | Path, sha256: str, size: int | None = None, *, what: str = "") -> None:
    """Raise :class:`IntegrityError` unless the file at ``path`` has this sha256 (and size, when given)."""
    path = Path(path)
    name = what or str(path)
    if not path.is_file():
        raise IntegrityError(f"{name}: missing ({path} is not a file)")
    actual = storage.sha256_file(path)
    if size is not None and path.stat().st_size != size:
        raise IntegrityError(f"{name}: {path.stat().st_size} bytes, but {size} were recorded (sha256 {actual}, "
                             f"recorded {sha256}); the object was changed or truncated after it was registered — "
                             "do not load it")
    if actual != sha256.lower():
        raise IntegrityError(f"{name}: sha256 {actual} does not match the recorded {sha256}; the object was "
                             "changed after it was registered — do not load it")


def parse_version_uri(version_uri: str) -> tuple[str, str, str]:
    """``(folder URI with a trailing '/', version id, 12-hex hash)`` of a registered version's folder."""
    base = version_uri.rstrip("/") + "/"
    version = base.rstrip("/").rsplit("/", 1)[-1]
    m = _VERSION.match(version)
    if not base.startswith("s3://") or m is None:
        raise IntegrityError(f"{version_uri!r}: not a registered model version; expected "
                             "s3://BUCKET/models/<backbone>/<backbone>-<12 hex digits>/")
    return base, version, m["hash"]


def _checksums(s3: Any, base: str) -> dict[str, dict[str, Any]]:
    """``{relative name: entry}`` from the version's checksums.json, every name checked to be safe."""
    uri = base + CHECKSUMS
    try:
        doc = json.loads(storage.read_bytes(uri, s3))
    except ValueError as err:
        raise IntegrityError(f"{uri}: not valid JSON ({err})") from err
    if not isinstance(doc, list):
        raise IntegrityError(f"{uri}: expected a JSON list of {{uri, sha256, bytes}}, got {type(doc).__name__}")
    entries: dict[str, dict[str, Any]] = {}
    for i, e in enumerate(doc):
        if not (isinstance(e, dict) and isinstance(e.get("uri"), str) and isinstance(e.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", e["sha256"]) and isinstance(e.get("bytes"), int)):
            raise IntegrityError(f"{uri}[{i}]: expected {{uri, sha256 (64 hex), bytes (int)}}, got {e!r}")
        if not e["uri"].startswith(base):
            raise IntegrityError(f"{uri}[{i}]: {e['uri']!r} is outside the version folder {base}")
        name = e["uri"][len(base):]
        try:
            storage.safe_relative(name, f"{uri}[{i}]")
        except storage.StorageError as err:
            raise IntegrityError(str(err)) from None
        if name in entries or name == CHECKSUMS:
            raise IntegrityError(f"{uri}[{i}]: {name!r} listed twice or lists checksums.json itself")
        entries[name] = e
    if MODEL_FILE not in entries:
        raise IntegrityError(f"{uri}: does not list {MODEL_FILE}; the version is incomplete")
    return entries


def _prepare_dest(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise IntegrityError(f"{dest}: already exists and is not an empty folder; pass a new folder to download into")
    dest.parent.mkdir(parents=True, exist_ok=True)


def fetch_version(s3: Any, version_uri: str, dest: str | Path, names: Sequence[str] | None = None, *,
                  optional: Sequence[str] = ()) -> Path:
    """Download a registered version's files into ``dest`` (a new or empty folder), verified; return ``dest``.

    ``names``: the files wanted (default: all listed in checksums.json; ``model.keras`` is always fetched);
    one that is not listed is an error. ``optional``: files fetched only when listed (e.g. ``config.json``).
    Only names listed in checksums.json are ever downloaded.
    """
    base, version, digest = parse_version_uri(version_uri)
    dest = Path(dest)
    _prepare_dest(dest)
    entries = _checksums(s3, base)
    wanted = list(dict.fromkeys([MODEL_FILE, *(names if names is not None else entries),
                                 *(n for n in optional if n in entries)]))
    unlisted = [n for n in wanted if n not in entries]
    if unlisted:
        raise IntegrityError(f"{base}{CHECKSUMS}: does not list {unlisted}; only listed files can be fetched")
    if not entries[MODEL_FILE]["sha256"].startswith(digest):
        raise IntegrityError(f"{base}{MODEL_FILE}: checksums.json records sha256 {entries[MODEL_FILE]['sha256']}, "
                             f"which does not match the version id {version}")
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.part-"))
    try:
        for name in wanted:
            e = entries[name]
            path = storage.safe_join(tmp, name, e["uri"])
            storage.download_file(e["uri"], path, s3)
            verify_file(path, e["sha256"], e["bytes"], what=e["uri"])
        os.replace(tmp, dest)  # an empty dest folder is replaced atomically
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def is_version_uri(uri: str) -> bool:
    """Whether ``uri`` names a registered version folder (``.../<backbone>-<12 hex>/``)."""
    try:
        parse_version_uri(uri)
    except IntegrityError:
        return False
    return True
