"""Class-folder datasets → a manifest (pandas): one row per usable image, one per rejected file.

Layouts accepted, locally or under ``s3://bucket/prefix``: ``<root>/<class>/*`` and the Kaggle archive's
``seg_train/seg_train/<class>``, ``seg_test/seg_test/<class>`` (``seg_pred`` is unlabelled and ignored).

Splits come from each image's content hash, so an image never changes split when others are added and
identical copies always share a split: ``val`` is ~20% of each class's training pool (at least one per
class), ``test`` is the separate test folder when given, else a ~20% hold-out of each class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from scene import images, storage
from scene.metadata import CLASS_NAMES, IMAGE_SUFFIXES

MANIFEST_COLUMNS = ["key", "label", "label_index", "split", "sha256", "width", "height", "mode", "format",
                    "bytes", "note"]
REJECTED_COLUMNS = ["key", "label", "problem"]
_KAGGLE_DIRS = {"seg_train": "train", "seg_test": "test", "seg_pred": "pred"}

Progress = Callable[[int, int], None]


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message names the folder or file and the fix."""


@dataclass(frozen=True)
class SplitConfig:
    """How images are assigned to splits (by content hash, so assignments are stable)."""

    val_fraction: float = 0.2  # share of each class's training pool used for validation
    test_fraction: float = 0.2  # hold-out share per class when there is no separate test folder
    seed: int = 1337  # changes every assignment at once; keep it fixed across retrainings


@dataclass(frozen=True)
class Dataset:
    """A built manifest with everything a training run needs to know about its data."""

    manifest: pd.DataFrame = field(repr=False)
    rejected: pd.DataFrame = field(repr=False)
    class_names: tuple[str, ...]
    source: str
    test_source: str | None
    fingerprint: str  # hash of (sha256, label, split) of every row: the data's identity

    def split(self, name: str) -> pd.DataFrame:
        """The manifest rows of one split."""
        return self.manifest[self.manifest["split"] == name].reset_index(drop=True)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split per class."""
        table = self.manifest.groupby(["split", "label"]).size()
        return {s: {c: int(table.get((s, c), 0)) for c in self.class_names} for s in ("train", "val", "test")}


@dataclass(frozen=True)
class _File:
    key: str
    size: int
    label: str | None
    origin: str  # "pool" (train+val), "test" or "pred"
    problem: str = ""


def _classify(root: str, key: str, size: int, origin_default: str) -> _File:
    rel = key[len(root) :].lstrip("/") if key.startswith(root) else key
    parts = list(PurePosixPath(rel.replace("\\", "/")).parts)
    origin = origin_default
    while parts and parts[0] in _KAGGLE_DIRS:
        origin = {"train": "pool", "test": "test", "pred": "pred"}[_KAGGLE_DIRS[parts.pop(0)]]
    name = parts[-1] if parts else rel
    if origin == "pred":
        return _File(key, size, None, origin, "unlabelled (seg_pred): not used for training")
    if len(parts) < 2:
        return _File(key, size, None, origin, "not inside a class folder (<root>/<class>/<image>)")
    label = parts[0]
    if name.startswith("."):
        return _File(key, size, label, origin, "hidden file, not an image")
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        return _File(key, size, label, origin,
                     f"not an image file (suffix {PurePosixPath(name).suffix or 'none'!r}; "
                     f"expected {', '.join(IMAGE_SUFFIXES)})")
    return _File(key, size, label, origin)


def _list(src: str, s3: Any, origin: str) -> list[_File]:
    loc = storage.parse(src)
    root = str(loc).rstrip("/") + "/" if loc.is_s3 else str(loc.key).rstrip("/") + "/"
    files = [_classify(root, k, n, origin) for k, n in storage.list_files(loc, s3)]
    if not loc.is_s3:  # empty class folders are invisible in S3, visible here
        from pathlib import Path

        for d in sorted(Path(loc.key).rglob("*")):
            if d.is_dir() and not any(d.iterdir()):
                files.append(_File(str(d), 0, d.name, origin, "empty class folder"))
    if not files:
        raise DatasetError(f"{src}: no files found; expected <root>/<class>/<image> (JPEG, PNG, BMP, GIF)")
    return files


def resolve_classes(found: Sequence[str], class_names: Sequence[str] | None) -> tuple[str, ...]:
    """The class list: given explicitly, else the Intel classes when the folders are among them."""
    found_set = set(found)
    if class_names is not None:
        unknown = sorted(found_set - set(class_names))
        if unknown:
            raise DatasetError(f"unknown class folders {unknown}; expected only {list(class_names)}")
        return tuple(class_names)
    if found_set <= set(CLASS_NAMES):
        return CLASS_NAMES
    unknown = sorted(found_set - set(CLASS_NAMES))
    raise DatasetError(
        f"unknown class folders {unknown} (the Intel classes are {list(CLASS_NAMES)}); "
        "pass --classes a,b,c to train on other classes"
    )


def unit_hash(sha: str, seed: int) -> float:
    """A uniform number in [0, 1) derived from an image's content hash and the split seed."""
    return int(hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()[:15], 16) / 16**15


def assign_splits(df: pd.DataFrame, has_test_folder: bool, cfg: SplitConfig) -> pd.Series:
    """Split per row from its hash; every class with ≥2 pool images gets ≥1 validation image."""
    u = df["sha256"].map(lambda s: unit_hash(s, cfg.seed))
    split = pd.Series("train", index=df.index, dtype=object)
    pool = df["origin"] == "pool"
    split[~pool] = "test"
    if has_test_folder:
        split[pool & (u < cfg.val_fraction)] = "val"
    else:
        split[pool & (u < cfg.test_fraction)] = "test"
        val_hi = cfg.test_fraction + cfg.val_fraction * (1 - cfg.test_fraction)
        split[pool & (u >= cfg.test_fraction) & (u < val_hi)] = "val"
    for needed in ("val",) if has_test_folder else ("val", "test"):
        for _, idx in df[pool].groupby("label").groups.items():
            labels = split[idx]
            if (labels == needed).any() or (labels == "train").sum() < 2:
                continue
            # the lowest hash among this class's training images: stable as images are added
            pick = u[idx][labels == "train"].sort_values().index[0]
            split[df["sha256"] == df.at[pick, "sha256"]] = needed
    return split


def fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash identifying the data: the same images, labels and splits give the same value."""
    rows = sorted(zip(manifest["sha256"], manifest["label"], manifest["split"], strict=True))
    return hashlib.sha256("\n".join(map(",".join, rows)).encode()).hexdigest()[:16]


def _read_row(f: _File, s3: Any) -> tuple[dict[str, Any] | None, str]:
    try:
        data = storage.read_bytes(f.key, s3)
    except storage.StorageError as err:
        return None, f"cannot read: {err}"
    try:
        info = images.inspect(data)
    except images.ImageProblem as err:
        return None, str(err)
    return {"key": f.key, "label": f.label, "origin": f.origin, "sha256": storage.sha256_bytes(data),
            "width": info.width, "height": info.height, "mode": info.mode, "format": info.format,
            "bytes": len(data), "note": info.note}, ""


def build_dataset(
    src: str,
    test_src: str | None = None,
    *,
    class_names: Sequence[str] | None = None,
    split: SplitConfig = SplitConfig(),
    s3: Any = None,
    progress: Progress | None = None,
    workers: int = 8,
) -> Dataset:
    """List, read, hash and check every file; return the manifest and the list of rejected files."""
    files = _list(src, s3, "pool") + (_list(test_src, s3, "test") if test_src else [])
    has_test = test_src is not None or any(f.origin == "test" for f in files)
    labelled = sorted({f.label for f in files if f.label and f.problem != "empty class folder"})
    classes = resolve_classes(labelled or [f.label for f in files if f.label], class_names)
    rejected = [{"key": f.key, "label": f.label or "", "problem": f.problem} for f in files if f.problem]
    todo = [f for f in files if not f.problem]
    rows: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, (f, (row, problem)) in enumerate(zip(todo, pool.map(lambda f: _read_row(f, s3), todo),
                                                    strict=True)):
            if row is None:
                rejected.append({"key": f.key, "label": f.label or "", "problem": problem})
            else:
                rows.append(row)
            if progress and (i + 1) % 200 == 0:
                progress(i + 1, len(todo))
    if progress:
        progress(len(todo), len(todo))
    df = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, "origin"])
    df["label_index"] = df["label"].map({c: i for i, c in enumerate(classes)}).astype("int64")
    df["split"] = assign_splits(df, has_test, split) if len(df) else pd.Series(dtype=object)
    manifest = df[MANIFEST_COLUMNS].sort_values("key").reset_index(drop=True)
    rej = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).sort_values("key").reset_index(drop=True)
    return Dataset(manifest=manifest, rejected=rej, class_names=classes, source=src,
                   test_source=test_src, fingerprint=fingerprint(manifest))


def load_dataset(manifest_csv: str, rejected_csv: str | None = None, *, s3: Any = None,
                 class_names: Sequence[str] | None = None, source: str = "") -> Dataset:
    """Read a manifest written by :func:`save_dataset` back."""
    import io

    manifest = pd.read_csv(io.BytesIO(storage.read_bytes(manifest_csv, s3)), keep_default_na=False)
    missing = sorted(set(MANIFEST_COLUMNS) - set(manifest.columns))
    if missing:
        raise DatasetError(f"{manifest_csv}: not a scene manifest, missing columns {missing}")
    rejected = (pd.read_csv(io.BytesIO(storage.read_bytes(rejected_csv, s3)), keep_default_na=False)
                if rejected_csv else pd.DataFrame(columns=REJECTED_COLUMNS))
    classes = tuple(class_names) if class_names else resolve_classes(sorted(set(manifest["label"])), None)
    return Dataset(manifest=manifest, rejected=rejected, class_names=classes, source=source,
                   test_source=None, fingerprint=fingerprint(manifest))
