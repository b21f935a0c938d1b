"""The tf.data input pipeline: decode (any JPEG/PNG/BMP/GIF, to RGB), resize keeping aspect and zero-pad,
batch, prefetch; plus the augmentation layers used on the train split only.

Importing this module changes nothing global: TensorFlow's thread plan (:func:`scene.model.runtime.configure_threads`)
is applied by the first function here (or in :mod:`scene.model.backbones` / :mod:`scene.model.network`) that builds
or runs a model, once per process.

Images are read and decoded by a bounded pool of threads (local files or S3 objects alike), so memory
stays flat whatever the dataset size. Pixels leave the pipeline as float32 in [0, 255]: the model does
its own preprocessing.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from scene.data import image_fetch, images, packs, storage
from scene.model import runtime

T = TypeVar("T")
PIPELINE_VERSION = 3  # bump when decoding, resizing or augmentation semantics change (part of feature-cache keys)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of training images (Keras preprocessing layers); 0 turns one off."""

    crop: float = 0.1  # random crop keeping 90–100% of each side, resized back
    zoom: float = 0.1  # random zoom in/out by up to 10%
    rotation: float = 0.03  # random rotation up to 3% of a full turn (~11°)
    flip: bool = True  # random horizontal flip (scenes are left-right symmetric, never upside down)
    contrast: float = 0.2  # random contrast factor in [0.8, 1.2]

    def fingerprint(self) -> str:
        """A short hash of the settings (part of feature-cache keys)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


def augmenter(cfg: AugmentConfig, size: int, seed: int) -> keras.Sequential:
    """The augmentation layers, applied with ``training=True`` to [0, 255] images of ``size``."""
    runtime.configure_threads()
    layers: list[keras.layers.Layer] = []
    if cfg.crop > 0:
        side = max(1, round(size * (1 - cfg.crop)))
        layers += [keras.layers.RandomCrop(side, side, seed=seed), keras.layers.Resizing(size, size)]
    if cfg.zoom > 0:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 1))
    if cfg.rotation > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation, fill_mode="reflect", seed=seed + 2))
    if cfg.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 3))
    if cfg.contrast > 0:
        layers.append(keras.layers.RandomContrast(cfg.contrast, value_range=(0, 255), seed=seed + 4))
    return keras.Sequential(layers, name="augment")


def decode_workers(keys: Sequence[str]) -> int:
    """Threads that read and decode ``keys``: one per core for local files (decoding is CPU-bound and competes
    with the backbone for the same cores), more for S3 objects (they also wait on the network)."""
    plan = runtime.thread_plan()
    return plan.s3_readers if keys and storage.parse(keys[0]).is_s3 else plan.decode


def ordered_map(fn: Callable[[str], T], keys: Sequence[str], workers: int, lookahead: int) -> Iterator[T]:
    """``fn`` over ``keys`` on a bounded pool, results in order, at most ``lookahead`` in flight."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: collections.deque = collections.deque()
        it = iter(keys)
        for key in itertools.islice(it, lookahead):
            window.append(pool.submit(fn, key))
        for key in it:
            yield window.popleft().result()
            window.append(pool.submit(fn, key))
        while window:
            yield window.popleft().result()


def resize_pad(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize keeping the aspect ratio, zero-pad to ``size``×``size``; float32 in [0, 255]."""
    runtime.configure_threads()
    image = tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size, antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


@functools.lru_cache(maxsize=8)
def _resizer(size: int) -> Callable[[np.ndarray], tf.Tensor]:
    """:func:`resize_pad` as a compiled function (an eager call costs ~10 ms of overhead per image)."""
    runtime.configure_threads()
    return tf.function(lambda img: resize_pad(img, size), reduce_retracing=True,
                       input_signature=[tf.TensorSpec((None, None, 3), tf.uint8)])


def load_pixels(key: str, size: int, s3: Any = None, *, min_side: int = 0,
                fetch: Callable[[str], bytes] | None = None, as_float: bool = True) -> np.ndarray:
    """One image as the model sees it: decoded, upright RGB, resized and zero-padded to ``size``, float32 0–255.

    The only image loader of training, extraction, evaluation and prediction. An image that already has the
    target size is not resampled: :func:`resize_pad` at the same size is the identity (tested), so skipping it
    changes no pixel and saves most of the per-image cost. ``min_side``: refuse smaller images
    (:class:`~scene.data.images.ImageProblem`), as the manifest does, for input that no manifest has checked.
    ``fetch``: reads the key's bytes (default: :func:`scene.data.image_fetch.reader` of ``s3``).
    ``as_float=False``: an image that needs no resampling stays uint8 (the same values; a batch converts once).
    """
    pixels = images.decode_rgb((fetch or image_fetch.reader(s3))(key))
    if min(pixels.shape[:2]) < min_side:
        h, w = pixels.shape[:2]
        raise images.ImageProblem(f"{w}x{h} is smaller than the {min_side}-pixel minimum side")
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels.astype(np.float32) if as_float else pixels
    return _resizer(size)(pixels).numpy()


def pixel_batches(keys: Sequence[str], size: int, *, batch_size: int, s3: Any = None, workers: int | None = None,
                  errors: dict[str, str] | None = None,
                  packed: Mapping[str, tuple[str, str]] | None = None) -> Iterator[np.ndarray]:
    """``(n, size, size, 3)`` float32 batches of ``keys`` in order. Decoding runs ahead on a thread pool while
    the caller computes (the backbone releases the GIL), so reading overlaps with the model.

    ``packed``: ``{key: (pack URI or "", sha256)}`` (:func:`scene.data.packs.locations` of manifest rows): keys with
    a pack are read one GET per pack, and from their own object when the pack is missing or damaged; every read of a
    listed key is checked against its hash (:class:`scene.data.packs.ContentMismatch` when it differs).

    ``errors``: when given (input no manifest has checked), an unreadable or too small image becomes an all-zero
    image and ``errors[key]`` says why; otherwise the first unreadable image raises.
    """
    fetch = packs.reader(image_fetch.reader(s3), packed or {})

    def load(key: str) -> np.ndarray:
        if errors is None:
            return load_pixels(key, size, s3, fetch=fetch, as_float=False)
        try:
            return load_pixels(key, size, s3, min_side=images.MIN_SIDE, fetch=fetch, as_float=False)
        except (images.ImageProblem, storage.StorageError) as err:
            errors[key] = str(err)
            return np.zeros((size, size, 3), np.uint8)

    it = ordered_map(load, keys, workers or decode_workers(keys), 2 * batch_size)
    while batch := list(itertools.islice(it, batch_size)):
        stacked = np.stack(batch)  # uint8 unless an image was resampled (float32: the stack is then float32)
        yield stacked if stacked.dtype == np.float32 else stacked.astype(np.float32)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(model: keras.Model) -> Callable[[Any], Any]:
    """``model(x, training=False)`` as one compiled function whose batch dimension is open: traced once, for every
    batch size. (Keras' ``predict_on_batch`` traces again for a second batch size, so a short last batch either
    costs a trace, ~2 s for MobileNetV2, or zero-padding computed for nothing, up to a whole batch.)"""
    runtime.configure_threads()  # a no-op after the first call (the model was usually built by a function that did)
    fn = _COMPILED.get(model)
    if fn is None:
        ref = weakref.ref(model)  # the cache must not keep the model alive
        spec = tf.TensorSpec((None, *model.input_shape[1:]), model.inputs[0].dtype)
        fn = _COMPILED[model] = tf.function(lambda x: ref()(x, training=False), input_signature=[spec])
    return fn


def predict_batches(model: keras.Model, batches: Iterable[np.ndarray],
                    transform: Callable[[np.ndarray], Any] | None = None) -> Iterator[np.ndarray]:
    """The model's outputs over ``batches`` through :func:`compiled` (never an eager call). Batches of any size,
    a short last one included, run as they are: nothing is padded and nothing is traced twice."""
    infer = compiled(model)
    for batch in batches:
        x = transform(batch) if transform is not None else batch
        yield np.asarray(infer(x), dtype=np.float32)


def image_dataset(
    rows: pd.DataFrame,
    size: int,
    *,
    num_classes: int,
    batch_size: int = 32,
    s3: Any = None,
    augment: keras.Model | None = None,
    shuffle: bool = False,
    seed: int = 0,
    labels: bool = True,
    workers: int | None = None,
) -> tf.data.Dataset:
    """Batches of ``(images, one_hot_labels)`` (or images only) for the manifest ``rows``, in order.

    With ``shuffle``, the order changes each epoch (seeded); ``augment`` is applied in training mode.
    Images go through :func:`load_pixels` on a thread pool, as in :func:`pixel_batches`; in order, the rows'
    image packs are read (a shuffled order would fetch each pack again for nearly every image); in any order, every
    image whose row records a SHA-256 is checked against it (:func:`scene.data.packs.reader`).
    """
    runtime.configure_threads()
    keys = rows["key"].tolist()
    order = np.arange(len(keys))
    pool = workers or decode_workers(keys)
    fetch = packs.reader(image_fetch.reader(s3), packs.locations(rows, use_packs=not shuffle))  # hashes checked

    def gen() -> Iterator[tuple[np.ndarray, int]]:
        idx = np.random.default_rng([seed, gen.epoch]).permutation(order) if shuffle else order
        gen.epoch += 1
        pixels = ordered_map(lambda k: load_pixels(k, size, s3, fetch=fetch), [keys[i] for i in idx], pool,
                             2 * batch_size)
        yield from zip(pixels, rows["label_index"].to_numpy()[idx] if labels else np.zeros(len(idx), int), strict=True)

    gen.epoch = 0  # type: ignore[attr-defined]
    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(tf.TensorSpec((size, size, 3), tf.float32), tf.TensorSpec((), tf.int64)),
    )
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(keys)))
    ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if not labels:
        ds = ds.map(lambda x, y: x)
    return ds.prefetch(tf.data.AUTOTUNE)
