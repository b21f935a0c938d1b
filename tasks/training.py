"""One task per stage of :mod:`scene.train.stages`: prepare, extract, fit, finetune, evaluate, write."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from scene.data.dataset import Dataset
from scene.train import stages
from scene.train.experiment import TrainResult
from scene.train.features import ExtractStats
from scene.train.fit import FitResult, TrainConfig
from tasks.common import S3_RETRIES, S3_TIMEOUT_S, STEP_TIMEOUT_S, Progress, s3, settings


@task(name="check weights", task_run_name="check weights {cfg.backbone}", cache_policy=NO_CACHE,
      timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def prepare(ds: Dataset, cfg: TrainConfig, out_dir: str, on_missing: stages.OnMissingWeights,
            cache_root: str | None = None) -> stages.BackboneRun:
    """Resolve the weights once (the artifact bucket's mirror included) and build the backbone; ``cache_root``: the
    feature cache (default: SCENE_FEATURE_CACHE)."""
    s = settings()
    run = stages.prepare(ds, cfg, Path(out_dir), cache_root=cache_root or s.feature_cache, s3=s3(s),
                         mirror=f"s3://{s.artifact_bucket}/{s.weights_mirror_prefix}", on_missing=on_missing)
    if run.fallback:
        get_run_logger().warning(run.fallback)
    get_run_logger().info("%s weights: %s", cfg.backbone, run.weights.origin)
    return run


@task(name="extract features", task_run_name="extract features {run.cfg.backbone}", cache_policy=NO_CACHE,
      timeout_seconds=STEP_TIMEOUT_S, **{**S3_RETRIES, "retries": 1})  # a retry resumes from the cached shards
def extract(run: stages.BackboneRun, chunk: tuple[int, int] | None = None) -> ExtractStats | None:
    """Run the frozen backbone over every image view not yet in the feature cache (cached strategy); ``chunk=(i,
    k)``: only chunk ``i`` of ``k`` of the images."""
    stats = stages.extract(run, s3=s3(), progress=Progress(), chunk=chunk)
    if stats is not None:
        get_run_logger().info("%s features: %d computed, %d from cache, %.0f s", run.cfg.backbone, stats.computed,
                              stats.cached, stats.seconds)
    return stats


@task(name="train head", task_run_name="train head {run.cfg.backbone}", cache_policy=NO_CACHE,
      timeout_seconds=STEP_TIMEOUT_S)
def fit(run: stages.BackboneRun, extracted: ExtractStats | None) -> FitResult:
    """The frozen phase: head on cached features, or online with the backbone in the loop."""
    fitted = stages.fit(run, extracted, s3=s3(), progress=Progress())
    rate = fitted.history.attrs.get("epochs_per_s")
    get_run_logger().info("%s head trained: %d epochs, best val loss %.4f%s", run.cfg.backbone, len(fitted.history),
                          fitted.history["val_loss"].min(), f", {rate:.1f} epochs/s" if rate else "")
    return fitted


@task(name="fine-tune", task_run_name="fine-tune {run.cfg.backbone}", cache_policy=NO_CACHE,
      timeout_seconds=STEP_TIMEOUT_S)
def finetune(run: stages.BackboneRun, fitted: FitResult) -> FitResult:
    """Unfreeze the top blocks or layers (BatchNorm stays frozen) and train under warm-up + cosine decay."""
    what = (f"{run.cfg.finetune_blocks} blocks" if run.cfg.finetune_blocks else f"{run.cfg.finetune_layers} layers")
    get_run_logger().info("fine-tuning the top %s of %s for %d epochs (peak lr %g)", what, run.cfg.backbone,
                          run.cfg.finetune_epochs, run.cfg.finetune_lr)
    return stages.finetune(run, fitted, s3=s3(), progress=Progress())


@task(name="evaluate", task_run_name="evaluate {run.cfg.backbone}", cache_policy=NO_CACHE,
      timeout_seconds=STEP_TIMEOUT_S)
def evaluate(run: stages.BackboneRun, fitted: FitResult) -> stages.Evaluation:
    """Predictions and metrics for train, validation and test."""
    evaluation = stages.evaluate(run, fitted, s3=s3(), progress=Progress())
    t = evaluation.metrics.get("test")
    if t is not None:  # `scene runs watch` reads this line
        get_run_logger().info("%s test: accuracy %.3f, weighted F1 %.3f%s", run.cfg.backbone, t.accuracy,
                              t.f1_weighted, f" — COLLAPSED: {t.collapse_reason}" if t.collapsed else "")
    return evaluation


@task(name="report", task_run_name="report {run.cfg.backbone}", cache_policy=NO_CACHE,
      timeout_seconds=S3_TIMEOUT_S)
def write(run: stages.BackboneRun, fitted: FitResult, evaluation: stages.Evaluation,
          prefix: str | None = None) -> TrainResult:
    """Plots, metrics.json, report.html (with the run's label audit, when it ran) and the model card."""
    from scene.audit.labels import issue_rows_at

    client = s3()
    issues = issue_rows_at(f"{prefix.rstrip('/')}/label_issues.csv", client) if prefix else []
    return stages.write(run, fitted, evaluation, s3=client, label_issues=issues)
