"""One backbone, start to finish: ``prepare → extract → fit → finetune → evaluate → write``.

The CLI (:func:`train_one`), the Python API (:func:`run_backbone`, which raises) and the Prefect flow
``train-backbone`` (one task per stage) call these same functions in this order. ``prepare`` looks the backbone up,
resolves its weights once (Keras cache → the S3 mirror → a download, or a file) and builds the frozen backbone once
(:func:`scene.model.backbones.shared_backbone`: extraction and the saved model use that very network); the
:class:`BackboneRun` it returns is carried through every later stage.

    run = prepare(ds, cfg, out_dir, cache_root=cache, s3=s3, mirror=mirror)
    extracted = extract(run, s3=s3)        # cached strategy: features of every image view not yet cached
    fitted = fit(run, extracted, s3=s3)    # the head (backbone frozen); saves model.keras
    fitted = finetune(run, fitted, s3=s3)  # optional: the top blocks or layers, warm-up + cosine decay
    evaluation = evaluate(run, fitted, s3=s3)
    result = write(run, fitted, evaluation, s3=s3)
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from scene.data.dataset import Dataset
from scene.errors import WeightsUnavailable
from scene.evaluation.metrics import SplitMetrics
from scene.model import backbones
from scene.model.predict import Predictions
from scene.train import fit as fitting  # the module; fit() below is the stage
from scene.train.experiment import (
    RANDOM_INIT_WARNING,
    TrainResult,
    evaluate_all,
    result_of,
    test_predictions,
    write_artifacts,
)
from scene.train.features import ExtractStats
from scene.train.fit import FitResult, Progress, TrainConfig

OnMissingWeights = Literal["random-init", "fail"]


@dataclass(frozen=True)
class BackboneRun:
    """One backbone ready to train: the data, its config, registry entry and weights (each resolved once)."""

    ds: Dataset
    cfg: TrainConfig  # weights="none" when the asked-for weights were missing and random init was allowed
    spec: backbones.BackboneSpec
    weights: backbones.WeightsSource
    out_dir: Path  # model.keras, config.json, metrics.json, plots, report.html, model_card.md
    cache_root: str | None  # the feature cache (folder or s3:// URI); the cached strategy needs one
    started: float  # time.time() when prepare began: a result's seconds count from here
    fallback: str = ""  # why the run trains from random initialisation instead of the weights asked for


@dataclass(frozen=True)
class Evaluation:
    """Predictions and metrics of every split, and the test split's per-image outcome (one typed object)."""

    predictions: dict[str, Predictions]
    metrics: dict[str, SplitMetrics]
    test: pd.DataFrame | None  # key, sha256, y_true, y_pred, correct: what the registry and the gate pair on


def prepare(ds: Dataset, cfg: TrainConfig, out_dir: str | Path, *, cache_root: str | None = None, s3: Any = None,
            mirror: str | None = None, on_missing: OnMissingWeights = "fail") -> BackboneRun:
    """Resolve the weights (once, the S3 ``mirror`` included) and build the backbone (once).

    ``on_missing="random-init"``: weights that cannot be found become random initialisation (named in
    ``fallback``); ``"fail"`` raises :class:`~scene.errors.WeightsUnavailable` with the ways to provide them.
    """
    started = time.time()
    if cfg.strategy == "cached" and cache_root is None:
        raise ValueError("strategy='cached' needs a feature cache location (--cache DIR_OR_URI or SCENE_FEATURE_CACHE)")
    spec = backbones.get_spec(cfg.backbone)
    fallback = ""
    try:
        weights = backbones.resolve_weights(spec, cfg.weights, cfg.image_size, s3=s3, mirror=mirror, seed=cfg.seed)
    except WeightsUnavailable as err:
        if on_missing != "random-init":
            raise
        fallback = f"{err} — training {cfg.backbone} from RANDOM INITIALISATION instead: {RANDOM_INIT_WARNING}"
        cfg = dataclasses.replace(cfg, weights="none")
        weights = backbones.resolve_weights(spec, "none", cfg.image_size, seed=cfg.seed)
    with fitting.precision_policy(cfg.mixed_precision):  # the dtype policy the later stages build under
        backbones.shared_backbone(cfg.backbone, cfg.image_size, weights, cfg.seed)
    return BackboneRun(ds, cfg, spec, weights, Path(out_dir), cache_root, started, fallback)


def extract(run: BackboneRun, *, s3: Any = None, progress: Progress | None = None,
            chunk: tuple[int, int] | None = None) -> ExtractStats | None:
    """Cached strategy: the backbone's features of every image view not cached yet (None for ``online``);
    ``chunk=(i, k)``: only the images of chunk ``i`` of ``k`` (:func:`scene.train.features.chunks`)."""
    if run.cfg.strategy != "cached":
        return None
    return fitting.extract_features(run.ds, run.cfg, run.weights, run.cache_root,  # type: ignore[arg-type]
                                  s3=s3, progress=progress, chunk=chunk)


def fit(run: BackboneRun, extracted: ExtractStats | None, *, s3: Any = None,
        progress: Progress | None = None) -> FitResult:
    """The head, backbone frozen: on the cached features, or online with the backbone in the loop."""
    return fitting.fit_frozen(run.ds, run.cfg, run.out_dir, run.weights, cache_root=run.cache_root, s3=s3,
                            progress=progress, extracted=extracted)


def finetune(run: BackboneRun, fitted: FitResult, *, s3: Any = None, progress: Progress | None = None) -> FitResult:
    """The top ``cfg.finetune_blocks`` blocks (or ``finetune_layers`` layers) fine-tuned; ``fitted`` when neither."""
    return fitting.finetune(run.ds, run.cfg, fitted, s3=s3, progress=progress)


def evaluate(run: BackboneRun, fitted: FitResult, *, s3: Any = None, progress: Progress | None = None,
             bootstrap: int = 1000) -> Evaluation:
    """Predictions of every split (test always by the saved model, checked against the cached path) and metrics."""
    preds = fitting.all_predictions(run.ds, run.cfg, fitted, cache_root=run.cache_root, s3=s3, progress=progress)
    metrics = evaluate_all(preds, run.ds.class_names, bootstrap=bootstrap, seed=run.cfg.seed)
    test = test_predictions(preds["test"], run.ds) if "test" in preds else None
    return Evaluation(preds, metrics, test)


def write(run: BackboneRun, fitted: FitResult, evaluation: Evaluation, *, s3: Any = None,
          label_issues: Sequence[dict[str, Any]] = ()) -> TrainResult:
    """Plots, metrics, config, report, model card and the manifest it trained on into ``out_dir``; the run's
    :class:`TrainResult`."""
    run.ds.manifest.to_csv(run.out_dir / "manifest.csv", index=False)  # registered with the model
    write_artifacts(run.ds, run.cfg, fitted, evaluation.predictions, evaluation.metrics, run.out_dir, s3=s3,
                    label_issues=label_issues, test=evaluation.test)
    export_model(run, fitted, s3=s3)
    return result_of(run.ds, run.cfg, fitted, evaluation.metrics, run.out_dir, time.time() - run.started)


def export_model(run: BackboneRun, fitted: FitResult, *, s3: Any = None) -> dict | None:
    """The saved model as OpenVINO IR beside it (:func:`scene.model.export.write`), checked on real images of the
    test split (else validation, else training); a failure is a warning, never the run's failure."""
    import logging

    from scene.data import packs
    from scene.model import export
    from scene.model.pipeline import pixel_batches

    try:
        if not export.wanted():  # before decoding the sample (SCENE_EXPORT=none: nothing to check it on)
            return None
        for split in ("test", "val", "train"):
            rows = run.ds.split(split).head(export.SAMPLE_IMAGES)
            if len(rows):
                break
        sample = next(pixel_batches(rows["key"].tolist(), run.cfg.image_size, batch_size=export.SAMPLE_IMAGES,
                                    s3=s3, packed=packs.locations(rows)))
        return export.write(fitted.model_path, run.out_dir, sample, run.ds.class_names)
    except Exception as err:  # the model.keras stays the shipped model either way
        logging.getLogger(__name__).warning("%s: no exported model written (%s: %s)", run.out_dir,
                                            type(err).__name__, err)
        return None


def failed(ds: Dataset, cfg: TrainConfig, err: BaseException, out_dir: str | Path | None = None,
           seconds: float = 0.0) -> TrainResult:
    """The ``failed`` result of a backbone whose run raised ``err`` (its traceback to ``error.txt`` when given)."""
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "error.txt").write_text("".join(traceback.format_exception(err)))
    return TrainResult(cfg.backbone, "failed", f"{type(err).__name__}: {err}", str(out_dir or ""), None, {}, seconds,
                       cfg.weights, strategy=cfg.strategy, data_fingerprint=ds.fingerprint)


def run_backbone(ds: Dataset, cfg: TrainConfig, out_dir: str | Path, *, cache_root: str | None = None,
                 s3: Any = None, mirror: str | None = None, progress: Progress | None = None,
                 bootstrap: int = 1000) -> TrainResult:
    """Every stage of one backbone in this process; raises what a stage raises (the Python API's way)."""
    run = prepare(ds, cfg, out_dir, cache_root=cache_root, s3=s3, mirror=mirror)
    fitted = fit(run, extract(run, s3=s3, progress=progress), s3=s3, progress=progress)
    fitted = finetune(run, fitted, s3=s3, progress=progress)
    return write(run, fitted, evaluate(run, fitted, s3=s3, progress=progress, bootstrap=bootstrap), s3=s3)


def train_one(ds: Dataset, cfg: TrainConfig, out_dir: str | Path, *, cache_root: str | None = None, s3: Any = None,
              mirror: str | None = None, progress: Progress | None = None, bootstrap: int = 1000) -> TrainResult:
    """:func:`run_backbone`, an error becoming a ``failed`` result (the CLI's way: one row per backbone)."""
    start = time.perf_counter()
    try:
        return run_backbone(ds, cfg, out_dir, cache_root=cache_root, s3=s3, mirror=mirror, progress=progress,
                            bootstrap=bootstrap)
    except Exception as err:  # one backbone's failure is reported, never stops the others
        return failed(ds, cfg, err, out_dir, time.perf_counter() - start)
