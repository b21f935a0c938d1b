"""Sharded, streaming batch prediction (issue 24): an input listing split into chunks, each chunk predicted into one
part (Parquet and CSV) with memory flat in the number of images, and a manifest of the parts.

Layout under a prediction folder ``<folder>/`` (``s3://<artifacts>/predictions/<run>/``)::

    listing/chunk-00003.txt     the input keys of chunk 3, one per line (written by the parent run)
    parts/part-00003.parquet    key, label, confidence, p_<class>…, error (one row per listed file)
    parts/part-00003.csv        the same rows as CSV
    parts/part-00003.json       the part's counts and the sha256 of both files (written last: the part is whole)
    manifest.json               every part, the totals and the classes (written by the parent run)

A key's chunk is the first hex digit of the sha256 of its URI, mod the chunk count (whole digits per chunk, as the
feature cache's partitions), so a listing splits in one pass and the same key always lands in the same chunk.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scene.data import storage
from scene.data.chunking import chunk_of as chunk_of  # predict's chunks: by key
from scene.data.chunking import require_chunks
from scene.model.predict import columns, frames, list_images, problem_rows, screen


class PartError(RuntimeError):
    """A part or manifest that is missing, damaged or inconsistent; the message names the object."""


def listing_uri(folder: str, chunk: int) -> str:
    return f"{folder.rstrip('/')}/listing/chunk-{chunk:05d}.txt"


def part_uri(folder: str, chunk: int, kind: str) -> str:
    """``kind``: parquet, csv or json (the part's sidecar)."""
    return f"{folder.rstrip('/')}/parts/part-{chunk:05d}.{kind}"


def manifest_uri(folder: str) -> str:
    return f"{folder.rstrip('/')}/manifest.json"


def split_listing(keys: Iterable[str], folder: str, chunks: int, s3: Any = None) -> list[tuple[int, str]]:
    """Write each key to its chunk's listing file under ``folder`` (streamed through local temp files: memory is
    flat in the number of keys); per chunk, the number of keys and the listing file's sha256."""
    require_chunks(chunks)
    counts = [0] * chunks
    with tempfile.TemporaryDirectory(prefix="scene-listing-") as tmp, contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(Path(tmp) / f"{i}.txt", "w", encoding="utf-8")) for i in range(chunks)]
        for key in keys:
            if "\n" in key or "\r" in key:
                raise ValueError(f"{key!r}: a key with a line break cannot be listed; rename the object")
            i = chunk_of(key, chunks)
            files[i].write(key + "\n")
            counts[i] += 1
        for fh in files:
            fh.close()
        digests = [put_file(Path(tmp) / f"{i}.txt", listing_uri(folder, i), s3) for i in range(chunks)]
    return list(zip(counts, digests, strict=True))


def read_listing(uri: str, s3: Any = None) -> tuple[list[str], str]:
    """The keys of one chunk's listing file, and the file's sha256."""
    data = storage.read_bytes(uri, s3)
    return [line for line in data.decode("utf-8").split("\n") if line], storage.sha256_bytes(data)


@dataclass(frozen=True)
class Part:
    """One written part: its chunk, rows (classified + unreadable) and the sha256 and size of each file."""

    chunk: int
    rows: int
    classified: int
    unreadable: int
    files: dict[str, dict[str, Any]]  # kind → {"uri", "sha256", "bytes"}
    source: dict[str, str] = field(default_factory=dict)  # what it was predicted from: {"listing": sha256, "model"}


class PartWriter:
    """Appends frames to a local CSV and Parquet file with one fixed schema (so a group of only unreadable rows
    still matches); memory holds one frame at a time."""

    def __init__(self, folder: Path, class_names: Sequence[str], *, parquet: bool = True) -> None:
        import pyarrow as pa

        self.class_names = list(class_names)
        self.csv = folder / "part.csv"
        self.parquet = folder / "part.parquet" if parquet else None
        fields = [("key", pa.string()), ("label", pa.string()), ("confidence", pa.float64()),
                  *((f"p_{c}", pa.float64()) for c in class_names), ("error", pa.string())]
        self.schema = pa.schema(fields)
        self._pq: Any = None
        self.rows = self.classified = 0
        self._header = True

    def write(self, df: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        df = df[columns(self.class_names)]
        with open(self.csv, "a", encoding="utf-8", newline="") as fh:
            df.to_csv(fh, index=False, header=self._header, float_format="%.6f")
        self._header = False
        if self.parquet is not None:
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.parquet, self.schema)
            self._pq.write_table(pa.Table.from_pandas(df, schema=self.schema, preserve_index=False))
        self.rows += len(df)
        self.classified += int((df["error"] == "").sum())

    def close(self) -> None:
        if self._header:  # nothing written: an empty part still has its header and schema
            self.write(problem_rows(self.class_names, []))
        if self._pq is not None:
            self._pq.close()
            self._pq = None


def predict_folder(model: Any, src: str, out: str, class_names: Sequence[str], *, s3: Any = None,
                   progress: Callable[[str, int, int], None] | None = None) -> tuple[int, int]:
    """Write :func:`scene.model.predict.predict_frame`'s rows to ``out`` as one CSV, streamed (memory flat in the
    number of images); returns (images predicted, files listed with an error)."""
    listed, bad = list_images(src, s3, check=False)
    with tempfile.TemporaryDirectory(prefix="scene-predict-") as tmp:
        writer = _stream(PartWriter(Path(tmp), class_names, parquet=False), model, listed, bad, s3, progress)
        put_file(writer.csv, out, s3)
    return writer.classified, writer.rows - writer.classified


def _stream(writer: PartWriter, model: Any, keys: Sequence[str], problems: Sequence[tuple[str, str]], s3: Any,
            progress: Callable[[str, int, int], None] | None) -> PartWriter:
    """Predict ``keys`` into ``writer`` group by group, then the rows of ``problems``; the closed writer."""
    for df in frames(model, keys, writer.class_names, s3=s3, progress=progress):
        writer.write(df)
    if problems:
        writer.write(problem_rows(writer.class_names, problems))
    writer.close()
    return writer


def predict_part(model: Any, listed: Sequence[str], class_names: Sequence[str], folder: str, chunk: int, *,
                 s3: Any = None, progress: Callable[[str, int, int], None] | None = None,
                 source: dict[str, str] | None = None) -> Part:
    """Predict one chunk's listed keys (streaming: :func:`scene.model.predict.frames`) into its Parquet and CSV
    part under ``folder``, then its sidecar (written last, so a sidecar means a whole part). ``source``: what the
    part was predicted from (its listing's sha256, the model), recorded so a later run never takes it for its own."""
    keys, problems = screen(listed)
    with tempfile.TemporaryDirectory(prefix="scene-part-") as tmp:
        writer = _stream(PartWriter(Path(tmp), class_names), model, keys, problems, s3, progress)
        files = {}
        for kind, path in (("parquet", writer.parquet), ("csv", writer.csv)):
            uri = part_uri(folder, chunk, kind)
            files[kind] = {"uri": uri, "sha256": put_file(path, uri, s3), "bytes": Path(path).stat().st_size}
    part = Part(chunk, writer.rows, writer.classified, writer.rows - writer.classified, files, dict(source or {}))
    storage.write_bytes(part_uri(folder, chunk, "json"), json.dumps(asdict(part), indent=2).encode(), s3)
    return part


def read_part(folder: str, chunk: int, s3: Any = None, *, source: dict[str, str] | None = None) -> Part | None:
    """A chunk's part as its sidecar records it; None when there is no sidecar (the part was never finished) or,
    given ``source``, when the part was predicted from another listing or model (an earlier run's, in a reused
    folder)."""
    uri = part_uri(folder, chunk, "json")
    if not storage.exists(uri, s3):
        return None
    try:
        part = Part(**json.loads(storage.read_bytes(uri, s3)))
    except (ValueError, TypeError) as err:
        raise PartError(f"{uri}: not a part record ({err}); delete it and predict chunk {chunk} again") from err
    return part if source is None or part.source == source else None


def write_manifest(folder: str, parts: Sequence[Part], *, class_names: Sequence[str], facts: dict[str, Any],
                   s3: Any = None) -> dict[str, Any]:
    """``manifest.json``: every part (in chunk order) with its files' sha256, the totals and the columns."""
    chunks = sorted(p.chunk for p in parts)
    if chunks != list(range(len(parts))):
        raise PartError(f"{manifest_uri(folder)}: parts of chunks {chunks} do not cover 0..{len(parts) - 1}")
    doc = {"format": "scene.predictions/1", **facts, "classes": list(class_names), "columns": columns(class_names),
           "chunks": len(parts), "rows": sum(p.rows for p in parts),
           "classified": sum(p.classified for p in parts), "unreadable": sum(p.unreadable for p in parts),
           "parts": [asdict(p) for p in sorted(parts, key=lambda p: p.chunk)]}
    storage.write_bytes(manifest_uri(folder), json.dumps(doc, indent=2).encode(), s3)
    return doc


def read_predictions(manifest: str, s3: Any = None, *, kind: str = "parquet", columns_: Sequence[str] | None = None,
                     doc: dict[str, Any] | None = None) -> Iterator[pd.DataFrame]:
    """Each part of a prediction manifest as a DataFrame (one part in memory at a time), each file checked against
    the sha256 the manifest records (:class:`PartError` naming the file when it differs). ``doc``: the manifest
    already read (it is not read again)."""
    import io

    doc = doc or json.loads(storage.read_bytes(manifest, s3))
    for part in doc["parts"]:
        f = part["files"][kind]
        data = storage.read_bytes(f["uri"], s3)
        if storage.sha256_bytes(data) != f["sha256"]:
            raise PartError(f"{f['uri']}: sha256 {storage.sha256_bytes(data)[:12]}… differs from the manifest's "
                            f"{f['sha256'][:12]}… ({manifest}); predict chunk {part['chunk']} again")
        if kind == "parquet":
            yield pd.read_parquet(io.BytesIO(data), columns=list(columns_) if columns_ else None)
        else:
            df = pd.read_csv(io.BytesIO(data), keep_default_na=False)
            yield df[list(columns_)] if columns_ else df


def sample_classified(manifest: str, n: int, s3: Any = None, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of up to ``n`` classified keys over all parts, each part's share in proportion to its rows
    (one part's keys in memory at a time): the drift check's input."""
    doc = json.loads(storage.read_bytes(manifest, s3))
    total = max(int(doc["classified"]), 1)
    rng = np.random.default_rng(seed)
    picked: list[str] = []
    for df in read_predictions(manifest, s3, columns_=("key", "error"), doc=doc):
        keys = df.loc[df["error"] == "", "key"].tolist()
        take = min(len(keys), int(np.ceil(n * len(keys) / total)))
        picked += [keys[i] for i in sorted(rng.choice(len(keys), take, replace=False))] if take else []
    return pd.DataFrame({"key": picked[:n]})


def put_file(path: str | Path, uri: str, s3: Any) -> str:
    """Upload (S3) or copy (local folder) a finished local file to ``uri``; its sha256."""
    if storage.parse(uri).is_s3:
        return storage.upload_file(path, uri, s3)
    import shutil

    with storage.atomic_path(storage.parse(uri).key) as dest:
        shutil.copyfile(path, dest)
    return storage.sha256_file(path)
