"""Training one backbone: the frozen phase (``cached`` features or ``online``), optional fine-tuning,
then predictions on every split. Each phase is a function of its own; :mod:`scene.train.stages` calls them in order
(for the CLI and, one task per stage, for the Prefect flow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from scene.data import storage
from scene.data.dataset import Dataset
from scene.model import backbones
from scene.model.network import (
    HeadConfig,
    assemble,
    build_head,
    compile_model,
    ensemble,
    plain_view,
    unfreeze_blocks,
    unfreeze_top,
    warmup_cosine,
)
from scene.model.network import load as load_model
from scene.model.pipeline import AugmentConfig, augmenter, image_dataset, predict_batches
from scene.model.predict import Predictions, predict
from scene.train import features

Progress = Callable[[str, int, int], None]
STRATEGIES = ("cached", "online")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run of one backbone (stored beside the model)."""

    backbone: str
    weights: str = "imagenet"  # "imagenet", "none" (random init) or a path / s3:// URI to .weights.h5
    strategy: str = "cached"  # "cached": head on stored features; "online": backbone in the loop
    views: int = 2  # cached: augmented views per training image (0 = no augmentation)
    epochs: int = 100  # upper bound; early stopping on val loss usually ends sooner
    image_size: int = 150  # the Intel photos are 150 px; resize + zero-pad to this
    batch_size: int = 32  # online / fine-tuning batch size (cached head uses 64)
    learning_rate: float = 3e-4  # Adam, frozen phase (3e-4 beat 1e-3 on Intel val/test: 0.905 vs 0.892)
    patience: int = 15  # early stopping patience (epochs without val-loss improvement)
    finetune_layers: int = 0  # >0: unfreeze the top N backbone layers for a second phase
    finetune_blocks: int = 0  # >0: unfreeze the top N whole blocks (and the layers above them) instead
    finetune_epochs: int = 10  # the fine-tuning phase's epochs (the cosine schedule spans them all)
    finetune_lr: float = 1e-5  # peak Adam learning rate when fine-tuning (reached after the warm-up)
    finetune_warmup: float = 0.5  # epochs of linear warm-up from 0 before the cosine decay to 0
    finetune_label_smoothing: float = 0.0  # fine-tuning's loss: targets (1 - s)·one-hot + s/k (0: plain)
    finetune_mirror: bool = True  # a mirror model, fine-tuned, still ships the mirror average (False: plain path)
    finetune_ema: float = 0.0  # >0: Polyak averaging, momentum per step; validation and the shipped model use it
    finetune_refit: bool = False  # the shipped network is fine-tuned again on train + val for the epochs val chose
    finetune_ensemble: bool = False  # with the refit: ship the average of the selection and the refit networks
    mixed_precision: bool = False  # float16 compute, float32 output (GPUs)
    mirror: bool = False  # train also on mirrored images; the shipped model averages over image and mirror
    refit: bool = False  # cached: after early stopping on val, a fresh head trains on train + val and ships
    seed: int = 42  # seeds weights init, shuffling, augmentation and dropout
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        backbones.get_spec(self.backbone)  # raises with the list of known names
        checks = [
            (self.strategy in STRATEGIES, "strategy", self.strategy, f"one of {STRATEGIES}"),
            (self.views >= 0, "views", self.views, "0 (no augmentation) or more"),
            (self.epochs >= 1, "epochs", self.epochs, "1 or more"),
            (32 <= self.image_size <= 1024, "image_size", self.image_size, "between 32 and 1024"),
            (self.batch_size >= 1, "batch_size", self.batch_size, "1 or more"),
            (self.finetune_layers >= 0, "finetune_layers", self.finetune_layers, "0 (off) or more"),
            (self.finetune_blocks >= 0, "finetune_blocks", self.finetune_blocks, "0 (off) or more"),
            (not (self.finetune_layers and self.finetune_blocks), "finetune_blocks", self.finetune_blocks,
             "0 when finetune_layers is set (unfreeze by layers or by blocks, not both)"),
            (self.finetune_epochs >= 1, "finetune_epochs", self.finetune_epochs, "1 or more"),
            (self.finetune_lr > 0, "finetune_lr", self.finetune_lr, "a positive number"),
            (0 <= self.finetune_warmup < self.finetune_epochs, "finetune_warmup", self.finetune_warmup,
             "0 or more epochs, fewer than finetune_epochs"),
            (0 <= self.finetune_label_smoothing < 1, "finetune_label_smoothing", self.finetune_label_smoothing,
             "0 (off) or more, below 1"),
            (0 <= self.finetune_ema < 1, "finetune_ema", self.finetune_ema, "0 (off) or a momentum below 1, e.g. 0.99"),
            (not self.finetune_refit or self.finetunes, "finetune_refit", self.finetune_refit,
             "False unless finetune_blocks or finetune_layers is set (it refits the fine-tuning phase)"),
            (not self.finetune_ensemble or self.finetune_refit, "finetune_ensemble", self.finetune_ensemble,
             "False unless finetune_refit is set (its members are the selection network and the refit one)"),
            (self.learning_rate > 0, "learning_rate", self.learning_rate, "a positive number"),
            (not self.refit or (self.strategy == "cached" and not self.finetunes), "refit", self.refit,
             "False with strategy='online' or fine-tuning (the refit trains the head on val, which fine-tuning "
             "needs unseen to stop on)"),
        ]
        for ok, name, value, expected in checks:
            if not ok:
                raise ValueError(f"{name}={value!r} is invalid; expected {expected}")

    @property
    def finetunes(self) -> bool:
        """Whether a fine-tuning phase follows the frozen one."""
        return bool(self.finetune_layers or self.finetune_blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        return cls(**{**d, "head": HeadConfig(**d.pop("head", {})), "augment": AugmentConfig(**d.pop("augment", {}))})


AGREEMENT_MIN = 0.995  # the saved model must agree with the cached-feature path on this share of test images


class ModelMismatch(RuntimeError):
    """The saved model does not predict what the cached-feature path predicted: the run's numbers would lie."""


@dataclass(frozen=True)
class FitResult:
    """What the training phases produced."""

    model_path: Path
    history: pd.DataFrame
    weights: backbones.WeightsSource
    extract: features.ExtractStats | None
    seconds: float
    held_out_val: Predictions | None = None  # refit: the selection network's val predictions (the shipped one saw val)


class _ProgressCallback(keras.callbacks.Callback):
    def __init__(self, progress: Progress | None, stage: str, epochs: int) -> None:
        super().__init__()
        self.progress, self.stage, self.epochs = progress, stage, epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if self.progress:
            self.progress(self.stage, epoch + 1, self.epochs)


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """Use float16 compute inside the block when asked; always restore the previous policy."""
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def _callbacks(cfg: TrainConfig, progress: Progress | None, stage: str, epochs: int, *,
               plateau: bool = True, ema: bool = False) -> list[keras.callbacks.Callback]:
    plateaus = [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=max(2, cfg.patience // 3),
                                                  min_lr=1e-7)] if plateau else []
    # before EarlyStopping: the averaged weights are in the model when it scores and keeps an epoch
    averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else []
    return [
        *averaging,
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
        *plateaus,
        _ProgressCallback(progress, stage, epochs),
    ]


def _history(hist: keras.callbacks.History, phase: str, start_epoch: int = 0) -> pd.DataFrame:
    df = pd.DataFrame(hist.history)
    if "learning_rate" in df:
        df = df.rename(columns={"learning_rate": "lr"})
    df.insert(0, "epoch", np.arange(start_epoch + 1, start_epoch + len(df) + 1))
    df.insert(1, "phase", phase)
    return df


def precision_name(cfg: TrainConfig) -> str:
    """The Keras dtype policy a config computes under."""
    return "mixed_float16" if cfg.mixed_precision else "float32"


def feature_cache(cfg: TrainConfig, weights: backbones.WeightsSource, cache_root: str,
                  s3: Any = None) -> features.FeatureCache:
    """The cache namespace for a config and its weights."""
    ns = features.namespace(cfg.backbone, weights, cfg.image_size, cfg.augment, cfg.seed, precision_name(cfg))
    return features.FeatureCache(cache_root, ns, s3)


def train_views(cfg: TrainConfig) -> list[int]:
    """The cached views used for training images: the plain image plus ``views`` augmentations (and the mirror)."""
    return list(range(cfg.views + 1)) + ([features.MIRROR_VIEW] if cfg.mirror else [])


def eval_views(cfg: TrainConfig) -> list[int]:
    """The cached views of validation and test images: the plain image (and its mirror, averaged)."""
    return [0, features.MIRROR_VIEW] if cfg.mirror else [0]


def extract_features(ds: Dataset, cfg: TrainConfig, weights: backbones.WeightsSource, cache_root: str, *,
                     s3: Any = None, progress: Progress | None = None,
                     chunk: tuple[int, int] | None = None) -> features.ExtractStats:
    """Cached strategy, step 1: stored features for train (all views) and val/test (plain view, and its mirror).

    With ``refit``, val images get the training views too: the refit head trains on train + val alike.
    ``chunk=(i, k)``: only the images of chunk ``i`` of ``k`` (whole cache partitions, :func:`features.chunks`),
    so ``k`` workers can each extract one chunk into a shared cache."""
    cache = feature_cache(cfg, weights, cache_root, s3)
    model = None
    stats = []
    rows = ds.manifest if chunk is None else features.chunks(ds.manifest, chunk[1])[chunk[0]]
    split = rows["split"]
    like_train = split.isin(["train", "val"]) if cfg.refit else split == "train"
    parts = ((rows[like_train], train_views(cfg)), (rows[~like_train], eval_views(cfg)))
    with precision_policy(cfg.mixed_precision):
        for part, views in parts:
            missing = cache.missing([features.entry_key(s, v) for s in part["sha256"] for v in views])
            if missing and model is None:
                model = backbones.feature_extractor(cfg.backbone, cfg.image_size, weights, cfg.seed)
            stats.append(features.extract(part, views, backbone=cfg.backbone, weights=weights, size=cfg.image_size,
                                          cache=cache, augment=cfg.augment, seed=cfg.seed, s3=s3, progress=progress,
                                          model=model))
    return features.ExtractStats(sum(s.requested for s in stats), sum(s.cached for s in stats),
                                 sum(s.computed for s in stats), sum(s.seconds for s in stats), len(cache.corrupt))


def fit_frozen(ds: Dataset, cfg: TrainConfig, out_dir: Path, weights: backbones.WeightsSource, *,
               cache_root: str | None = None, s3: Any = None, progress: Progress | None = None,
               extracted: features.ExtractStats | None = None) -> FitResult:
    """Phase 1, backbone frozen: the head on cached features, or online with the backbone in the loop.

    ``extracted``: the stats of an :func:`extract_features` call already made for this data (skips the check).
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = backbones.get_spec(cfg.backbone)
    k = len(ds.class_names)
    extract_stats, held_out = None, None
    with precision_policy(cfg.mixed_precision):
        head = build_head(spec.feature_width, k, cfg.head)
        if cfg.strategy == "cached":
            if cache_root is None:
                raise ValueError("strategy='cached' needs a feature cache location (--cache DIR_OR_URI)")
            extract_stats = extracted or extract_features(ds, cfg, weights, cache_root, s3=s3, progress=progress)
            cache = feature_cache(cfg, weights, cache_root, s3)
            x_tr, y_tr = features.gather(cache, ds.split("train"), train_views(cfg))
            x_va, y_va = features.gather(cache, ds.split("val"), [0])
            history = fit_head(head, (x_tr, y_tr), (x_va, y_va), cfg, progress)
            if cfg.refit:
                held_out = head_predictions(head, cache, ds.split("val"), eval_views(cfg), "val", HELD_OUT)
                head, history = refit_head(ds, cfg, cache, history, progress)
            model = assemble(cfg.backbone, cfg.image_size, weights, head, cfg.seed, mirror=cfg.mirror)
        else:
            model = assemble(cfg.backbone, cfg.image_size, weights, head, cfg.seed, mirror=cfg.mirror)
            history = _fit_online(model, ds, cfg, cfg.learning_rate, cfg.epochs, "head", 0, s3, progress)
        name = "frozen.keras" if cfg.finetunes else "model.keras"  # fine-tuning writes model.keras
        fitted = _save(model, history, out_dir / name, weights, extract_stats, time.perf_counter() - start)
        return dataclasses.replace(fitted, held_out_val=held_out)


HELD_OUT = "held out: the head before its refit on train + val"


def kept_epochs(selection: pd.DataFrame) -> int:
    """The epochs a refit replays: up to the one early stopping restored (the lowest validation loss)."""
    return int(selection["val_loss"].to_numpy().argmin()) + 1


def refit_head(ds: Dataset, cfg: TrainConfig, cache: features.FeatureCache, selection: pd.DataFrame,
               progress: Progress | None = None) -> tuple[keras.Model, pd.DataFrame]:
    """A fresh head trained on train + val for the epochs early stopping chose on val, replaying the selection
    fit's learning-rate schedule (no val is left to watch). Returns it and the history of both fits."""
    epochs = kept_epochs(selection)
    rates = selection["lr"].to_numpy()[:epochs] if "lr" in selection else np.full(epochs, cfg.learning_rate)
    x, y = features.gather(cache, pd.concat([ds.split("train"), ds.split("val")]), train_views(cfg))
    keras.utils.set_random_seed(cfg.seed)
    head = build_head(backbones.get_spec(cfg.backbone).feature_width, len(ds.class_names), cfg.head)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: float(rates[epoch]))
    refit = fit_head(head, (x, y), None, dataclasses.replace(cfg, epochs=epochs), progress, callbacks=[schedule],
                     phase="refit")
    refit["epoch"] += len(selection)
    history = pd.concat([selection, refit], ignore_index=True)
    history.attrs.update(seconds=selection.attrs["seconds"] + refit.attrs["seconds"],
                         epochs_per_s=selection.attrs["epochs_per_s"], refit_epochs=epochs)
    return head, history


HEAD_BATCH = 64  # the head's minibatch on cached features
STEPS_PER_CALL = 64  # training steps run inside one compiled call (fewer Python round trips)


def fit_head(head: keras.Model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None,
             cfg: TrainConfig, progress: Progress | None = None, *, callbacks: list | None = None,
             phase: str = "head") -> pd.DataFrame:
    """Train the head on in-memory feature arrays: a shuffled ``tf.data`` pipeline over tensors already in
    memory, several steps per compiled call. Returns the history with ``seconds`` and ``epochs_per_s``.

    With ``val``, early stopping and learning-rate reduction watch its loss; without, ``cfg.epochs`` run with
    ``callbacks`` (e.g. a replayed learning-rate schedule)."""
    import tensorflow as tf

    k = head.output_shape[-1]
    x_tr, y_tr = train
    onehot = keras.utils.to_categorical
    data = tf.data.Dataset.from_tensor_slices((x_tr, onehot(y_tr, k)))
    data = data.shuffle(len(x_tr), seed=cfg.seed, reshuffle_each_iteration=True).batch(HEAD_BATCH).prefetch(2)
    steps = -(-len(x_tr) // HEAD_BATCH)
    head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="categorical_crossentropy",
                 metrics=["accuracy"], steps_per_execution=max(1, min(STEPS_PER_CALL, steps)))
    start = time.perf_counter()
    stage = f"{'refit' if phase == 'refit' else 'train'} head {cfg.backbone}"
    if val is not None:
        watch = {"validation_data": (val[0], onehot(val[1], k)), "validation_batch_size": 1024}
        callbacks = _callbacks(cfg, progress, stage, cfg.epochs) + (callbacks or [])
    else:
        watch, callbacks = {}, [_ProgressCallback(progress, stage, cfg.epochs)] + (callbacks or [])
    hist = head.fit(data, epochs=cfg.epochs, shuffle=False, verbose=0,  # the pipeline shuffles
                    callbacks=callbacks, **watch)
    seconds = time.perf_counter() - start
    history = _history(hist, phase)
    history.attrs.update(seconds=seconds, epochs_per_s=len(history) / seconds if seconds else 0.0)
    return history


def finetune(ds: Dataset, cfg: TrainConfig, fitted: FitResult, *, s3: Any = None,
             progress: Progress | None = None) -> FitResult:
    """Phase 2: the top ``cfg.finetune_blocks`` blocks (or ``cfg.finetune_layers`` layers) of the backbone train,
    BatchNorm frozen, on freshly augmented images, under a linear warm-up to ``cfg.finetune_lr`` and a cosine decay
    over ``cfg.finetune_epochs``; early stopping on validation loss keeps the best epoch. With ``cfg.finetune_ema``
    the optimizer keeps a moving average of the weights, which validation scores and the saved model holds. A mirror
    model trains its plain path (random flips stand in for the mirror: half the compute), which early stopping also
    scores; it ships averaging over both views, or with ``cfg.finetune_mirror`` False that plain path alone (the
    scored network). With ``cfg.finetune_refit`` the network that ships is fine-tuned again from the frozen model on
    train + val, under the same schedule, for the epochs val chose; val is then scored by the selection network.
    With ``cfg.finetune_ensemble`` as well, what ships averages the probabilities of both networks (the selection
    one, trained on train, and the refit one): twice the inference cost."""
    if not cfg.finetunes:
        return fitted
    start = time.perf_counter()
    with precision_policy(cfg.mixed_precision):
        model, plain = _tunable(fitted.model_path, cfg)
        history = _fit_online(plain, ds, cfg, cfg.finetune_lr, cfg.finetune_epochs, "finetune",
                              len(fitted.history), s3, progress)
        held_out = None
        if cfg.finetune_refit:
            selected = model if cfg.finetune_mirror else plain
            val = predict(selected, ds.split("val"), cfg.image_size, split="val", s3=s3, progress=progress)
            held_out = dataclasses.replace(val, source=HELD_OUT_TUNED)
            epochs = kept_epochs(history)
            model, plain = _tunable(fitted.model_path, cfg)
            merged = dataclasses.replace(ds, manifest=ds.manifest.assign(
                split=ds.manifest["split"].replace("val", "train")))
            refit = _fit_online(plain, merged, cfg, cfg.finetune_lr, cfg.finetune_epochs, "finetune-refit",
                                len(fitted.history) + len(history), s3, progress, stop_after=epochs)
            history = pd.concat([history, refit], ignore_index=True)
        shipped = model if cfg.finetune_mirror else plain
        if cfg.finetune_ensemble:
            shipped = ensemble([selected, shipped], name=shipped.name)
        history = pd.concat([fitted.history, history], ignore_index=True)
        if held_out is not None:
            history.attrs["refit_epochs"] = epochs
        saved = _save(shipped, history, fitted.model_path.with_name("model.keras"), fitted.weights, fitted.extract,
                      fitted.seconds + time.perf_counter() - start)
        return dataclasses.replace(saved, held_out_val=held_out)


HELD_OUT_TUNED = "held out: the fine-tuned network before its refit on train + val"


def _tunable(path: Path, cfg: TrainConfig) -> tuple[keras.Model, keras.Model]:
    """The saved frozen model with its top blocks (or layers) trainable, and its plain path (the same layers)."""
    model = load_model(str(path))
    if cfg.finetune_blocks:
        unfreeze_blocks(model, cfg.finetune_blocks)
    else:
        unfreeze_top(model, cfg.finetune_layers)
    return model, plain_view(model)  # the plain view shares every layer with model: training it trains both


def _save(model: keras.Model, history: pd.DataFrame, model_path: Path, weights: backbones.WeightsSource,
          extract_stats: features.ExtractStats | None, seconds: float) -> FitResult:
    with storage.atomic_path(model_path) as tmp:  # a full disk leaves no partial model.keras behind
        model.save(tmp)
    storage.write_bytes(str(model_path.with_name("history.csv")), history.to_csv(index=False).encode())
    return FitResult(model_path, history, weights, extract_stats, seconds)


def weights_for(cfg: TrainConfig, *, s3: Any = None, mirror: str | None = None) -> backbones.WeightsSource:
    """The weights file a config's ``weights`` names, found once (raises :class:`~scene.errors.WeightsUnavailable`
    with instructions). Runs call it through :func:`scene.train.stages.prepare`; the audit and benchmarks directly."""
    return backbones.resolve_weights(backbones.get_spec(cfg.backbone), cfg.weights, cfg.image_size, s3=s3,
                                     mirror=mirror, seed=cfg.seed)


def fit(ds: Dataset, cfg: TrainConfig, out_dir: Path, *, cache_root: str | None = None, s3: Any = None,
        mirror: str | None = None, progress: Progress | None = None) -> FitResult:
    """Both training phases in one call, without evaluating (tests, benchmarks); runs use :mod:`scene.train.stages`."""
    weights = weights_for(cfg, s3=s3, mirror=mirror)
    fitted = fit_frozen(ds, cfg, out_dir, weights, cache_root=cache_root, s3=s3, progress=progress)
    return finetune(ds, cfg, fitted, s3=s3, progress=progress)


def _fit_online(model: keras.Model, ds: Dataset, cfg: TrainConfig, lr: float, epochs: int, phase: str,
                start_epoch: int, s3: Any, progress: Progress | None, *, stop_after: int | None = None) -> pd.DataFrame:
    """Backbone in the loop, augmentation applied afresh every epoch. Fine-tuning follows one schedule over
    ``epochs``; ``stop_after`` ends it sooner (a refit, which has no val to stop on, replays the epochs val chose)."""
    k = len(ds.class_names)
    tuning = phase.startswith("finetune")
    rows, run = ds.split("train"), stop_after or epochs
    aug = augmenter(cfg.augment, cfg.image_size, cfg.seed) if cfg.views > 0 or tuning else None
    train = image_dataset(rows, cfg.image_size, num_classes=k, batch_size=cfg.batch_size, s3=s3,
                          augment=aug, shuffle=True, seed=cfg.seed)
    for x, _ in train.take(1):
        backbones.preflight(cfg.backbone, x)
    if tuning:  # a schedule over the whole phase instead of plateau reduction
        steps = -(-len(rows) // cfg.batch_size)
        compile_model(model, warmup_cosine(lr, steps * epochs, round(steps * cfg.finetune_warmup)),
                      label_smoothing=cfg.finetune_label_smoothing, ema=cfg.finetune_ema)
    else:
        compile_model(model, lr)
    stage = f"{phase} {cfg.backbone}"
    if ds.split("val").empty:  # nothing to watch: the epochs run; fit ends by loading the weight average, if any
        hist = model.fit(train, epochs=run, verbose=0, shuffle=False,
                         callbacks=[_ProgressCallback(progress, stage, run)])
    else:
        val = image_dataset(ds.split("val"), cfg.image_size, num_classes=k, batch_size=cfg.batch_size, s3=s3)
        hist = model.fit(train, validation_data=val, epochs=run, verbose=0, shuffle=False,
                         callbacks=_callbacks(cfg, progress, stage, run, plateau=not tuning,
                                              ema=tuning and cfg.finetune_ema > 0))
    return _history(hist, phase, start_epoch).assign(images=len(rows))  # photos trained on per epoch


def predict_cached(ds: Dataset, cfg: TrainConfig, fit_result: FitResult, cache_root: str, split: str,
                   s3: Any = None, *, model: keras.Model | None = None,
                   cache: features.FeatureCache | None = None) -> Predictions:
    """Probabilities from the head on cached plain-view features (same numbers as the full model, faster).

    Pass the loaded ``model`` and ``cache`` when predicting several splits, so each is read once.
    """
    cache = cache or feature_cache(cfg, fit_result.weights, cache_root, s3)
    head = (model or load_model(str(fit_result.model_path))).get_layer("head")
    return head_predictions(head, cache, ds.split(split), eval_views(cfg), split)


def head_predictions(head: keras.Model, cache: features.FeatureCache, rows: pd.DataFrame, views: list[int],
                     split: str, source: str = "cached features") -> Predictions:
    """A head's probabilities on the cached features of ``rows``, averaged over ``views`` as the model does."""
    x, y = features.gather(cache, rows, views)
    chunks = (x[i : i + 1024] for i in range(0, len(x), 1024))  # one compiled function, traced once
    probs = np.concatenate(list(predict_batches(head, chunks))).astype(np.float64) if len(x) else np.zeros((0, 0))
    if len(x):  # the mean over the views, as the shipped model averages over image and mirror
        probs, y = probs.reshape(len(views), len(rows), -1).mean(0), y[: len(rows)]
    return Predictions(split, rows["key"].tolist(), y, probs, source)


def all_predictions(ds: Dataset, cfg: TrainConfig, fit_result: FitResult, *, cache_root: str | None,
                    s3: Any = None, progress: Progress | None = None) -> dict[str, Predictions]:
    """Predictions for train, val and test, with the test split always scored by the saved ``model.keras``.

    When the backbone stayed frozen, train and val come from the head on cached features (fast); the test
    split is then scored both ways and the saved model's predictions are kept. If the two disagree on more
    than ``1 - AGREEMENT_MIN`` of the test images the run fails with :class:`ModelMismatch`: the cached
    features were not made by the network that ships, so no number of this run would mean anything.
    """
    out: dict[str, Predictions] = {}
    use_cache = cfg.strategy == "cached" and not cfg.finetunes and cache_root is not None
    model = load_model(str(fit_result.model_path))
    cache = feature_cache(cfg, fit_result.weights, cache_root, s3) if use_cache else None  # type: ignore[arg-type]
    for split in ("train", "val", "test"):
        if ds.split(split).empty:
            continue
        if use_cache:
            out[split] = predict_cached(ds, cfg, fit_result, cache_root, split, s3,  # type: ignore[arg-type]
                                        model=model, cache=cache)
        if split == "test" or not use_cache:
            shipped = predict(model, ds.split(split), cfg.image_size, split=split, s3=s3, progress=progress)
            if split in out:
                shipped = check_agreement(out[split], shipped, fit_result.model_path)
            out[split] = shipped
    if fit_result.held_out_val is not None and "val" in out:  # refit: the shipped head trained on val
        out["val"] = fit_result.held_out_val
    return out


def check_agreement(cached: Predictions, shipped: Predictions, model_path: Path | str) -> Predictions:
    """``shipped`` with its agreement to ``cached``; raises :class:`ModelMismatch` below ``AGREEMENT_MIN``."""
    if cached.keys != shipped.keys:
        raise ModelMismatch(f"{model_path}: cached and saved-model predictions cover different images")
    same = cached.probs.argmax(1) == shipped.probs.argmax(1)
    agreement = float(same.mean()) if len(same) else 1.0
    if agreement < AGREEMENT_MIN:
        bad = [k for k, ok in zip(shipped.keys, same, strict=True) if not ok][:3]
        raise ModelMismatch(
            f"{model_path}: the saved model agrees with the cached-feature predictions on only {agreement:.2%} of "
            f"{len(same)} {shipped.split} images (required {AGREEMENT_MIN:.1%}; e.g. {bad}). The cached features "
            "were not computed by the network that was saved; clear the feature cache for this backbone and rerun.")
    return Predictions(shipped.split, shipped.keys, shipped.y_true, shipped.probs, "saved model", agreement)
