"""Where audit features come from: the feature cache (datasets) or a saved model (a champion's view of new images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

Progress = Callable[[str, int, int], None]


def cached_features(rows: pd.DataFrame, cfg: Any, weights: Any, cache_root: str, *, s3: Any = None,
                    progress: Progress | None = None) -> np.ndarray:
    """Plain-view (view 0) features of ``rows`` from the cache, computing only the missing ones.

    ``cfg``: a :class:`scene.train.fit.TrainConfig` (backbone, size, seed, precision); ``weights``: its resolved
    :class:`scene.model.backbones.WeightsSource`. The namespace is the one training uses, so training reuses them.
    """
    from scene.train import features, fit

    cache = fit.feature_cache(cfg, weights, cache_root, s3)
    with fit.precision_policy(cfg.mixed_precision):
        features.extract(rows, [0], backbone=cfg.backbone, weights=weights, size=cfg.image_size, cache=cache,
                         augment=cfg.augment, seed=cfg.seed, s3=s3, progress=progress)
    return cache.get([features.entry_key(s, 0) for s in rows["sha256"]])


def model_outputs(model: Any, rows: pd.DataFrame, *, s3: Any = None, batch_size: int = 64,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pooled backbone features, class probabilities) of a saved scene model over ``rows`` (plain images); for an
    ensemble the features are its first member's, the probabilities the ensemble's."""
    import keras

    from scene.model.network import backbone_of, members
    from scene.model.pipeline import image_dataset

    inp = keras.Input(model.input_shape[1:])
    first = members(model)[0]
    feats = backbone_of(first)(first.get_layer("preprocess")(inp), training=False)
    both = keras.Model(inp, [feats, first.get_layer("head")(feats) if first is model else model(inp)])
    size = int(model.input_shape[1])
    xs, ps, done = [], [], 0
    for batch in image_dataset(rows, size, num_classes=1, batch_size=batch_size, s3=s3, labels=False):
        f, p = both.predict_on_batch(batch)
        xs.append(np.asarray(f, np.float32))
        ps.append(np.asarray(p, np.float64))
        done += len(xs[-1])
        if progress:
            progress("audit features", done, len(rows))
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros((0, model.output_shape[-1]))
    return np.concatenate(xs), np.concatenate(ps)


def image_rows(src: str, *, s3: Any = None, limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """``key, sha256`` of the readable images under ``src`` (any depth); a seeded sample of ``limit`` of them."""
    from scene.data import storage
    from scene.model.predict import list_images

    keys, _ = list_images(src, s3)
    if limit is not None and len(keys) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(keys), limit, replace=False))
        keys = [keys[i] for i in pick]
    return pd.DataFrame({"key": keys, "sha256": [storage.sha256_bytes(storage.read_bytes(k, s3)) for k in keys]})
