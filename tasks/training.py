"""Training tasks for one backbone: weights, features, head, fine-tuning, evaluation, report."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from scene import experiment, train
from scene.backbones import WeightsUnavailable
from scene.dataset import Dataset
from scene.evaluate import SplitMetrics
from scene.features import ExtractStats
from scene.train import FitResult, Predictions, TrainConfig
from tasks.common import Progress, s3, settings

RANDOM_INIT = "random-init"


@task(name="check weights", retries=2, retry_delay_seconds=5)
def check_weights(cfg: TrainConfig, on_missing: str = RANDOM_INIT) -> TrainConfig:
    """Resolve the weights now; fall back to random init (``random-init``) or fail (``fail``) when unavailable."""
    log = get_run_logger()
    cfg_s = settings()
    try:
        w = train.resolve(cfg, s3=s3(cfg_s), mirror=f"s3://{cfg_s.artifact_bucket}/{cfg_s.weights_mirror_prefix}")
    except WeightsUnavailable as err:
        if on_missing != RANDOM_INIT:
            raise
        log.warning("%s — training %s from RANDOM INITIALISATION instead: %s", err, cfg.backbone,
                    experiment.RANDOM_INIT_WARNING)
        return dataclasses.replace(cfg, weights="none")
    log.info("%s weights: %s", cfg.backbone, w.origin)
    return cfg


@task(name="extract features", task_run_name="extract features {cfg.backbone}", retries=1)
def extract_features(ds: Dataset, cfg: TrainConfig, cache_root: str) -> ExtractStats:
    """Run the frozen backbone over every image not yet in the feature cache."""
    stats = train.extract_features(ds, cfg, train.resolve(cfg, s3=s3()), cache_root, s3=s3(), progress=Progress())
    get_run_logger().info("%s features: %d computed, %d from cache, %.0f s", cfg.backbone, stats.computed,
                          stats.cached, stats.seconds)
    return stats


@task(name="train head", task_run_name="train head {cfg.backbone}", cache_policy=NO_CACHE)
def train_head(ds: Dataset, cfg: TrainConfig, out_dir: str, cache_root: str,
               extracted: ExtractStats | None = None) -> FitResult:
    """The frozen phase: head on cached features, or online with the backbone in the loop."""
    fitted = train.fit_frozen(ds, cfg, Path(out_dir), train.resolve(cfg, s3=s3()), cache_root=cache_root, s3=s3(),
                              progress=Progress(), extracted=extracted)
    rate = fitted.history.attrs.get("epochs_per_s")
    get_run_logger().info("%s head trained: %d epochs, best val loss %.4f%s", cfg.backbone, len(fitted.history),
                          fitted.history["val_loss"].min(), f", {rate:.1f} epochs/s" if rate else "")
    return fitted


@task(name="fine-tune", task_run_name="fine-tune {cfg.backbone}", cache_policy=NO_CACHE)
def finetune(ds: Dataset, cfg: TrainConfig, fitted: FitResult) -> FitResult:
    """Unfreeze the top layers (BatchNorm stays frozen) and train at a low learning rate."""
    if not cfg.finetune_layers:
        return fitted
    get_run_logger().info("fine-tuning the top %d layers of %s", cfg.finetune_layers, cfg.backbone)
    return train.finetune(ds, cfg, fitted, s3=s3(), progress=Progress())


@task(name="evaluate", task_run_name="evaluate {cfg.backbone}")
def evaluate(ds: Dataset, cfg: TrainConfig, fitted: FitResult, cache_root: str
             ) -> tuple[dict[str, Predictions], dict[str, SplitMetrics]]:
    """Predictions and metrics for train, validation and test."""
    preds = train.all_predictions(ds, cfg, fitted, cache_root=cache_root, s3=s3(), progress=Progress())
    metrics = experiment.evaluate_all(preds, ds.class_names, seed=cfg.seed)
    t = metrics.get("test")
    if t is not None:
        get_run_logger().info("%s test: accuracy %.3f, weighted F1 %.3f%s", cfg.backbone, t.accuracy, t.f1_weighted,
                              f" — COLLAPSED: {t.collapse_reason}" if t.collapsed else "")
    return preds, metrics


@task(name="report", task_run_name="report {cfg.backbone}")
def report(ds: Dataset, cfg: TrainConfig, fitted: FitResult, preds: dict[str, Predictions],
           metrics: dict[str, SplitMetrics], out_dir: str, started: float,
           prefix: str | None = None) -> experiment.TrainResult:
    """Plots, metrics.json, report.html (with the run's label audit, when it ran) and the model card."""
    experiment.write_artifacts(ds, cfg, fitted, preds, metrics, Path(out_dir), s3=s3(),
                               label_issues=_label_issue_rows(prefix))
    return experiment.result_of(ds, cfg, fitted, metrics, Path(out_dir), time.time() - started)


def _label_issue_rows(prefix: str | None) -> list[dict]:
    """The rows of ``<prefix>/label_issues.csv`` (written by this run's label audit), or none."""
    from scene.audit.labels import issue_rows_at

    return issue_rows_at(f"{prefix.rstrip('/')}/label_issues.csv", s3()) if prefix else []
