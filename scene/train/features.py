"""The feature cache: pooled backbone features computed once per image and view, content-addressed.

A cache entry's address is the *namespace* — backbone, image size, the weights file's content hash,
augmentation settings, seed, precision policy, the inference runtime (:mod:`scene.model.infer`: ``tf`` or
``ov<version>-f32``), and a hash of everything else that changes a feature
(the source of the modules that decode, resize, augment and build the backbone, the pipeline version,
the Keras and TensorFlow versions) — plus ``(image sha256, view)``. View 0 is the plain image; views 1..K are random
augmentations; view -1 is the plain image mirrored. Entries are stored in shards (``.npz``) under
``<cache>/<namespace>/`` in a local folder
or an ``s3://`` prefix; a shard's name is the hash of its keys, so re-runs never duplicate work and
retraining on new data computes features only for new images. Extraction streams: a shard is written
every ``shard_size`` vectors of a partition, so memory stays bounded and an interrupted run resumes where it stopped.

The namespace is partitioned by the first hex digit of each image's sha256 (:data:`PARTITIONS`):
``<cache>/<namespace>/<digit>/shard-*.npz``. A reader lists and loads only the partitions of the keys it asks for,
each once (:attr:`FeatureCache.loaded`), so a worker given one chunk of the images (:func:`chunks`: a chunk is a set
of whole partitions) never reads the rest of the namespace.
Every image is checked against its manifest SHA-256 as it is read (:func:`scene.data.packs.reader`), so a vector is
stored only under the hash of the bytes it was computed from: an image changed since the manifest was built fails
the extraction (:class:`scene.data.packs.ContentMismatch`) before its vector exists.

Each shard is written whole (a temporary name renamed into place locally, one PUT on S3) and carries the sha256 of
its keys and vectors; a shard that does not load or whose content no longer matches that hash (a flipped bit, a
truncated file) is listed in :attr:`FeatureCache.corrupt`, deleted and never used: its vectors are recomputed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import itertools
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from scene.data import packs, storage
from scene.data.chunking import HEX_DIGITS, require_chunks
from scene.model import infer
from scene.model.backbones import WeightsSource, feature_extractor, preflight
from scene.model.pipeline import PIPELINE_VERSION, AugmentConfig, augmenter, pixel_batches

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ExtractStats:
    """How much of a feature request the cache answered."""

    requested: int  # (image, view) pairs asked for
    cached: int  # answered from the cache
    computed: int  # run through the backbone now
    seconds: float
    corrupt: int = 0  # damaged shards of this cache found and dropped so far (their vectors were recomputed)


PARTITIONS = HEX_DIGITS  # a cache key's partition: the first hex digit of its image's sha256
OTHER = "_"  # the partition of a key that does not start with a hex digit (not an image's sha256)


def partition(key: str) -> str:
    """The partition of a cache key ``<sha256>:<view>`` (or of a bare sha256): its first hex digit."""
    head = key[:1].lower()
    return head if head and head in PARTITIONS else OTHER


def chunks(rows: pd.DataFrame, k: int) -> list[pd.DataFrame]:
    """``rows`` split into ``k`` chunks of whole partitions (partition i goes to chunk i mod k), each chunk's rows
    in their original order: the chunks' workers read and write disjoint parts of the cache. Empty chunks are kept
    (chunk i is always the same partitions)."""
    require_chunks(k, "extract_chunks")
    chunk = rows["sha256"].map(lambda sha: PARTITIONS.find(partition(sha)) % k)
    return [rows[chunk == i] for i in range(k)]


class FeatureCache:
    """Shards of ``{key: vector}`` under one namespace folder/prefix, one subfolder per partition."""

    def __init__(self, root: str, namespace: str, s3: Any = None) -> None:
        self.loc = storage.parse(root).join(namespace)
        self.s3 = s3
        self._parts: dict[str, dict[str, np.ndarray]] = {}
        self.loaded: list[str] = []  # partitions listed and read so far, in order (each once)
        self.corrupt: list[str] = []  # shards found damaged (unreadable or hash mismatch), dropped and deleted

    def _partition(self, name: str) -> dict[str, np.ndarray]:
        """One partition's ``{key: vector}``, listed and read the first time it is asked for."""
        if name not in self._parts:
            index: dict[str, np.ndarray] = {}
            try:
                shards = [k for k, _ in storage.list_files(self.loc.join(name), self.s3)
                          if k.endswith(".npz") and not k.rsplit("/", 1)[-1].startswith(".")]  # not temporary files
            except storage.StorageError:
                if self.loc.is_s3:
                    raise
                shards = []  # a local partition folder that does not exist yet
            for uri in shards:
                entries = self._read_shard(uri)
                if entries is not None:
                    index.update(zip(*entries, strict=True))
            self._parts[name] = index
            self.loaded.append(name)
        return self._parts[name]

    def _read_shard(self, uri: str) -> tuple[list[str], np.ndarray] | None:
        """A shard's keys and vectors if it loads and matches its stored sha256; else drop it and return None."""
        try:
            with np.load(io.BytesIO(storage.read_bytes(uri, self.s3))) as z:
                keys, feats, stored = z["keys"].tolist(), z["features"], str(z["sha256"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # truncated, not a zip, or written without a hash: all mean "recompute"
        else:
            if len(keys) == len(feats) and _digest(keys, feats) == stored:
                return keys, feats
        self.corrupt.append(uri)
        with contextlib.suppress(Exception):  # a shard left in place is detected again next time, never used
            loc = storage.parse(uri)
            if loc.is_s3:
                self.s3.delete_object(Bucket=loc.bucket, Key=loc.key)
            else:
                Path(loc.key).unlink()
        return None

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in self._partition(partition(k))]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([self._partition(partition(k))[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def put(self, keys: Sequence[str], features: np.ndarray) -> list[str]:
        """Write one shard per partition the keys fall in; a shard's name is the hash of its keys, so rewriting it
        is harmless. Returns the shards' URIs/paths."""
        feats = np.ascontiguousarray(features, np.float32)
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(partition(key), []).append(i)
        uris = []
        for name, rows in sorted(groups.items()):
            part_keys, part_feats = [keys[i] for i in rows], feats[rows]
            buf = io.BytesIO()
            np.savez(buf, keys=np.asarray(part_keys), features=part_feats,
                     sha256=np.asarray(_digest(part_keys, part_feats)))
            digest = hashlib.sha256("\n".join(part_keys).encode()).hexdigest()[:24]
            uri = str(self.loc.join(name, f"shard-{digest}.npz"))
            storage.write_bytes(uri, buf.getvalue(), self.s3)
            self._partition(name).update(zip(part_keys, part_feats, strict=True))
            uris.append(uri)
        return uris


def _digest(keys: Sequence[str], feats: np.ndarray) -> str:
    """The sha256 a shard stores of its content: its keys, then its vectors as float32 bytes."""
    h = hashlib.sha256("\n".join(keys).encode())
    h.update(np.ascontiguousarray(feats, np.float32).tobytes())
    return h.hexdigest()


# The modules whose code decides what a feature vector is: a change in any of them is a new namespace.
FEATURE_MODULES = ("scene.data.images", "scene.model.pipeline", "scene.model.backbones", "scene.model.infer",
                   "scene.train.features")


@functools.cache
def source_hash(modules: Sequence[str] = FEATURE_MODULES) -> str:
    """A short sha256 over the source files of ``modules`` (not a version number someone must remember to bump),
    read once per process: a run that writes features and then reads them keeps one namespace even when the files
    change under it (a deploy, an edit) — the code it runs is the code it loaded."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"module {name!r} not found; cannot fingerprint its source")
        with open(spec.origin, "rb") as fh:
            h.update(name.encode() + b"\0" + fh.read())
    return h.hexdigest()[:12]


def environment_hash() -> str:
    """Code, pipeline version and library versions that change features: one short hash."""
    parts = f"{source_hash()}|pipeline{PIPELINE_VERSION}|keras{keras.__version__}|tf{tf.__version__}"
    return hashlib.sha256(parts.encode()).hexdigest()[:10]


def namespace(backbone: str, weights: WeightsSource, size: int, augment: AugmentConfig, seed: int,
              precision: str | None = None, runtime: str | None = None) -> str:
    """The part of a cache address shared by all images of one extraction setup.

    ``precision``: the Keras dtype policy the features are computed under (default: the current global one).
    ``runtime``: the inference runtime's tag (default: :func:`scene.model.infer.cache_tag` of ``precision``, e.g.
    ``tf`` or ``ov2026.4.1-f32``).
    """
    precision = precision or keras.mixed_precision.global_policy().name
    runtime = runtime or infer.cache_tag(precision)
    return (f"{backbone}-{size}px-{weights.fingerprint}-aug{augment.fingerprint()}-s{seed}-{precision}-{runtime}"
            f"-{environment_hash()}")


MIRROR_VIEW = -1  # the plain image mirrored left-right (deterministic; views 1..K are random augmentations)


def entry_key(sha: str, view: int) -> str:
    return f"{sha}:{view}"


def _mirror(batch: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(batch[:, :, ::-1])


def _augment_fn(cfg: AugmentConfig, size: int, seed: int) -> Callable[[np.ndarray], tf.Tensor]:
    """The augmentation layers in training mode as one compiled function over a batch."""
    layers = augmenter(cfg, size, seed)
    return tf.function(lambda x: layers(x, training=True), reduce_retracing=True)


def extract(
    rows: pd.DataFrame,
    views: Sequence[int],
    *,
    backbone: str,
    weights: WeightsSource,
    size: int,
    cache: FeatureCache,
    augment: AugmentConfig = AugmentConfig(),
    seed: int = 0,
    batch_size: int = 64,
    shard_size: int = 1024,
    s3: Any = None,
    progress: Progress | None = None,
    model: keras.Model | None = None,
) -> ExtractStats:
    """Make sure the cache holds features of every image in ``rows`` for every view in ``views``."""
    import time

    start = time.perf_counter()
    unique = rows.drop_duplicates("sha256")
    todo = {v: unique[unique["sha256"].isin({k.split(":")[0] for k in cache.missing(
        [entry_key(s, v) for s in unique["sha256"]])})] for v in views}
    total = sum(len(t) for t in todo.values())
    requested = len(unique) * len(views)
    done = 0
    if total:
        model = model or feature_extractor(backbone, size, weights, seed)
    for view, part in todo.items():
        if part.empty:
            continue
        transform = (_augment_fn(augment, size, seed + 1000 * view) if view > 0
                     else _mirror if view == MIRROR_VIEW else None)
        batches = pixel_batches(part["key"].tolist(), size, batch_size=batch_size, s3=s3,
                                packed=packs.locations(part))
        shas = part["sha256"].tolist()
        first = next(batches, None)
        if first is not None:
            preflight(backbone, first)
        pos = 0  # images of this view done so far
        pending: dict[str, tuple[list[str], list[np.ndarray]]] = {}  # per partition: keys and vectors not written
        for feats in infer.predict_batches(model, itertools.chain([first], batches), transform):
            for key, vector in zip([entry_key(s, view) for s in shas[pos : pos + len(feats)]], feats, strict=True):
                part_keys, vectors = pending.setdefault(partition(key), ([], []))
                part_keys.append(key)
                vectors.append(vector)
                if len(part_keys) >= shard_size:  # at most shard_size vectors wait per partition
                    cache.put(part_keys, np.stack(vectors))
                    del pending[partition(key)]
            pos += len(feats)
            done += len(feats)
            if progress:
                progress(f"features {backbone}", done, total)
        for part_keys, vectors in pending.values():
            cache.put(part_keys, np.stack(vectors))
    return ExtractStats(requested, requested - total, total, time.perf_counter() - start, len(cache.corrupt))


def gather(cache: FeatureCache, rows: pd.DataFrame, views: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Features and integer labels for ``rows`` × ``views`` (view-major order)."""
    x = np.concatenate([cache.get([entry_key(s, v) for s in rows["sha256"]]) for v in views])
    y = np.tile(rows["label_index"].to_numpy(), len(views))
    return x, y
