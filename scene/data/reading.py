"""The manifest step in chunks (issue 24): the new or changed images of a dataset read, hashed and checked by
several workers, with the manifest the same as one process builds.

The run that builds the manifest lists the data and copies the rows of unchanged objects (as always), then writes
the files still to read into ``chunks`` listing files under its folder (``<run>/reading/listing/``; a file's chunk
is the first hex digit of sha256(key) mod chunks, :func:`scene.data.chunking.chunk_of`). Each chunk run reads its
listing (:func:`read_chunk`: :func:`scene.data.dataset.read_files`, packing the bytes as the run itself would) and
writes its rows and rejected files as two CSV parts, then a record naming the listing's sha256 and each part's.
The building run takes each chunk's parts (:func:`load_part`) and reads itself any chunk whose run left none of
this listing, so a lost chunk run costs time, never rows.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from scene.data import packs, storage
from scene.data.chunking import chunk_of, require_chunks
from scene.data.dataset import MANIFEST_COLUMNS, REJECTED_COLUMNS, ListedFile, Progress, ReadRows, read_files

LISTED_COLUMNS = ["key", "size", "label", "origin", "tag"]
# a row as dataset.read_files gives it: the manifest's columns but those build_dataset adds, and where it came from
ROW_COLUMNS = [*(c for c in MANIFEST_COLUMNS if c not in ("label_index", "split")), "origin"]
_INTS = ("width", "height", "bytes")

log = logging.getLogger(__name__)


class ReadingError(storage.StorageError):
    """A chunk's listing or part cannot be used; the message names the file."""


def folder_for(run_prefix: str) -> str:
    """Where a run's reading chunks keep their listings and parts."""
    return f"{run_prefix.rstrip('/')}/reading"


def roots(data: str, test: str | None = None) -> list[str]:
    """The folder prefixes a chunk run may read under: ``data`` and ``test`` (when set), each ending in ``/``."""
    return [str(r).rstrip("/") + "/" for r in (data, test) if r]


def listing_uri(folder: str, chunk: int) -> str:
    return f"{folder.rstrip('/')}/listing/chunk-{chunk:05d}.csv"


def part_uri(folder: str, chunk: int, kind: str) -> str:
    """``kind``: ``rows.csv``, ``rejected.csv`` or ``json`` (the record, written last)."""
    return f"{folder.rstrip('/')}/parts/part-{chunk:05d}.{kind}"


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def split_files(files: Sequence[ListedFile], folder: str, chunks: int, s3: Any = None) -> list[str]:
    """Write each file to its chunk's listing under ``folder``; each listing's sha256 (chunk order)."""
    require_chunks(chunks)
    by_chunk: list[list[ListedFile]] = [[] for _ in range(chunks)]
    for f in files:
        by_chunk[chunk_of(f.key, chunks)].append(f)
    digests = []
    for i, mine in enumerate(by_chunk):
        frame = pd.DataFrame([[f.key, f.size, f.label or "", f.origin, f.tag] for f in mine], columns=LISTED_COLUMNS)
        data = _csv(frame)
        storage.write_bytes(listing_uri(folder, i), data, s3)
        digests.append(storage.sha256_bytes(data))
    return digests


def _read_csv(data: bytes, uri: str, columns: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise ReadingError(f"{uri}: not a CSV ({err})") from err
    if missing := [c for c in columns if c not in frame.columns]:
        raise ReadingError(f"{uri}: lacks columns {missing}; write it again (the run that builds the manifest does)")
    return frame


def read_listing(uri: str, s3: Any = None, roots: Sequence[str] = ()) -> tuple[list[ListedFile], str]:
    """One chunk's files and the listing's sha256. ``roots``: when given, every key must be under one of them (a
    chunk run reads only the data it was started for)."""
    data = storage.read_bytes(uri, s3)
    frame = _read_csv(data, uri, LISTED_COLUMNS)
    files = [ListedFile(r.key, int(r.size), r.label or None, r.origin, "", r.tag) for r in frame.itertuples()]
    if roots and (outside := [f.key for f in files if not any(f.key.startswith(r) for r in roots)]):
        raise ReadingError(f"{uri}: {len(outside)} key(s) outside the data roots {list(roots)}, e.g. {outside[0]!r}; "
                           "a chunk run reads only under the data it was started for")
    return files, storage.sha256_bytes(data)


def read_chunk(folder: str, chunk: int, s3: Any = None, *, roots: Sequence[str] = (), workers: int = 8,
               writer: packs.PackWriter | None = None, progress: Progress | None = None) -> ReadRows:
    """Read chunk ``chunk``'s listed files and write its parts, then its record; what was read."""
    files, digest = read_listing(listing_uri(folder, chunk), s3, roots)
    got = read_files(files, s3, workers=workers, progress=progress, writer=writer)
    record: dict[str, Any] = {"chunk": chunk, "listing": digest, "files": len(files), "rows": len(got.rows),
                              "rejected": len(got.rejected), "packs_written": got.packs_written, "parts": {}}
    for kind, frame in (("rows.csv", pd.DataFrame(got.rows, columns=ROW_COLUMNS)),
                        ("rejected.csv", pd.DataFrame(got.rejected, columns=REJECTED_COLUMNS))):
        data = _csv(frame)
        storage.write_bytes(part_uri(folder, chunk, kind), data, s3)
        record["parts"][kind] = storage.sha256_bytes(data)
    storage.write_bytes(part_uri(folder, chunk, "json"), json.dumps(record, indent=2).encode(), s3)
    return got


def load_part(folder: str, chunk: int, listing: str, s3: Any = None) -> ReadRows | None:
    """Chunk ``chunk``'s rows as :func:`read_chunk` wrote them for the listing whose sha256 is ``listing``; None when
    its run left no complete part of that listing (never written, a stale part, a file changed since): the caller
    reads that chunk itself."""
    uri = part_uri(folder, chunk, "json")
    if not storage.exists(uri, s3):
        return None
    try:
        record = json.loads(storage.read_bytes(uri, s3))
        if record["listing"] != listing:
            log.warning("%s: a part of another listing (a stale run); reading chunk %d again", uri, chunk)
            return None
        frames = {}
        for kind, columns in (("rows.csv", ROW_COLUMNS), ("rejected.csv", REJECTED_COLUMNS)):
            data = storage.read_bytes(part_uri(folder, chunk, kind), s3)
            if storage.sha256_bytes(data) != record["parts"][kind]:
                raise ReadingError(f"{part_uri(folder, chunk, kind)}: its sha256 is not the one {uri} records")
            frames[kind] = _read_csv(data, part_uri(folder, chunk, kind), columns)
    except (ValueError, KeyError, TypeError, storage.StorageError) as err:
        log.warning("chunk %d's part cannot be used (%s); reading the chunk again", chunk, err)
        return None
    rows = frames["rows.csv"].to_dict("records")
    for row in rows:
        for c in _INTS:
            row[c] = int(row[c])
        row["synthetic"] = row["synthetic"] == "True"
    return ReadRows(rows, frames["rejected.csv"].to_dict("records"), int(record.get("packs_written", 0)))


def collect(folder: str, listings: Sequence[str], s3: Any = None, *, roots: Sequence[str] = (), workers: int = 8,
            writer: packs.PackWriter | None = None) -> tuple[ReadRows, list[int]]:
    """Every chunk's rows, in chunk order: its part when its run left one of that listing (``listings[i]``: the
    sha256 of chunk i's listing), else read here (and its part written); and the chunks read here."""
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, str]] = []
    packs_written, here = 0, []
    for chunk, listing in enumerate(listings):
        got = load_part(folder, chunk, listing, s3)
        if got is None:
            here.append(chunk)
            got = read_chunk(folder, chunk, s3, roots=roots, workers=workers, writer=writer)
        rows += got.rows
        rejected += got.rejected
        packs_written += got.packs_written
    return ReadRows(rows, rejected, packs_written), here
