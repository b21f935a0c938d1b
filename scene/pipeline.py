"""The tf.data input pipeline: decode (any JPEG/PNG/BMP/GIF, to RGB), resize keeping aspect and zero-pad,
batch, prefetch; plus the augmentation layers used on the train split only.

Images are read and decoded by a bounded pool of threads (local files or S3 objects alike), so memory
stays flat whatever the dataset size. Pixels leave the pipeline as float32 in [0, 255]: the model does
its own preprocessing.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from scene import images, storage

PIPELINE_VERSION = 2  # bump when decoding, resizing or augmentation semantics change (part of feature-cache keys)


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


def _decoded(keys: list[str], s3: Any, workers: int, lookahead: int) -> Iterator[np.ndarray]:
    """Decode images in order with a bounded window of in-flight reads."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: collections.deque = collections.deque()
        it = iter(keys)
        for key in it:
            window.append(pool.submit(lambda k: images.decode_rgb(storage.read_bytes(k, s3)), key))
            if len(window) >= lookahead:
                break
        for key in it:
            yield window.popleft().result()
            window.append(pool.submit(lambda k: images.decode_rgb(storage.read_bytes(k, s3)), key))
        while window:
            yield window.popleft().result()


def resize_pad(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize keeping the aspect ratio, zero-pad to ``size``×``size``; float32 in [0, 255]."""
    image = tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size, antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


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
    workers: int = 8,
) -> tf.data.Dataset:
    """Batches of ``(images, one_hot_labels)`` (or images only) for the manifest ``rows``, in order.

    With ``shuffle``, the order changes each epoch (seeded); ``augment`` is applied in training mode.
    """
    keys = rows["key"].tolist()
    order = np.arange(len(keys))

    def gen() -> Iterator[tuple[np.ndarray, int]]:
        idx = np.random.default_rng([seed, gen.epoch]).permutation(order) if shuffle else order
        gen.epoch += 1
        yield from zip(_decoded([keys[i] for i in idx], s3, workers, 4 * batch_size),
                       rows["label_index"].to_numpy()[idx] if labels else np.zeros(len(idx), int), strict=True)

    gen.epoch = 0  # type: ignore[attr-defined]
    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(tf.TensorSpec((None, None, 3), tf.uint8), tf.TensorSpec((), tf.int64)),
    )
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(keys)))
    ds = ds.map(lambda x, y: (resize_pad(x, size), tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if not labels:
        ds = ds.map(lambda x, y: x)
    return ds.prefetch(tf.data.AUTOTUNE)
