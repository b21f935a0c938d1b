"""Flow: train, evaluate, report and upload one backbone (locally or on its own GPU worker)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from scene.dataset import Dataset
from scene.metadata import CLASS_NAMES
from scene.train import TrainConfig
from tasks import artifacts, training
from tasks import data as data_tasks
from tasks.common import settings, stable_hash


def run_prefix() -> str:
    """``s3://<artifact bucket>/runs/<this flow run's id>/``."""
    return f"s3://{settings().artifact_bucket}/runs/{flow_run.get_id() or 'local'}/"


def train_steps(ds: Dataset, cfg: TrainConfig, prefix: str, on_missing_weights: str) -> dict:
    """The per-backbone steps as tasks; returns the result as a dict."""
    started = time.time()
    s = settings()
    cfg = training.check_weights(cfg, on_missing_weights)
    out_dir = str(Path(s.work_dir) / ds.fingerprint / f"{cfg.backbone}-{stable_hash(cfg.to_dict())}")
    cache = s.feature_cache
    extracted = training.extract_features(ds, cfg, cache) if cfg.strategy == "cached" else None
    fitted = training.train_head(ds, cfg, out_dir, cache, extracted)
    fitted = training.finetune(ds, cfg, fitted)
    if extracted is not None:  # a cached training step carries the stats of the run that trained it
        fitted = dataclasses.replace(fitted, extract=extracted)
    preds, metrics = training.evaluate(ds, cfg, fitted, cache)
    result = training.report(ds, cfg, fitted, preds, metrics, out_dir, started)
    backbone_prefix = f"{prefix.rstrip('/')}/{cfg.backbone}/"
    artifacts.upload(out_dir, backbone_prefix, label=cfg.backbone)
    artifacts.write_result(result, backbone_prefix)
    return result.to_dict()


@flow(name="train-backbone", log_prints=True)
def train_backbone(
    backbone: str,
    manifest_uri: str | None = None,
    data: str | None = None,
    test: str | None = None,
    classes: list[str] | None = None,
    weights: str = "imagenet",
    strategy: Literal["cached", "online"] = "cached",
    views: int = 2,
    epochs: int = 100,
    image_size: int = 150,
    finetune_layers: int = 0,
    mixed_precision: bool = False,
    on_missing_weights: Literal["random-init", "fail"] = "fail",
    run_prefix_uri: str | None = None,
) -> dict:
    """Train one backbone on a published manifest (or build one from ``data``) and upload its artifacts."""
    cfg = TrainConfig(backbone=backbone, weights=weights, strategy=strategy, views=views, epochs=epochs,
                      image_size=image_size, finetune_layers=finetune_layers, mixed_precision=mixed_precision)
    names = classes or list(CLASS_NAMES)
    if manifest_uri:
        ds = data_tasks.load_manifest(manifest_uri, names)
    elif data:
        ds = data_tasks.build_manifest(data, test, classes)
        data_tasks.validate(ds)
    else:
        raise ValueError("train-backbone needs manifest_uri (from train-all) or data (a folder or s3:// URI)")
    prefix = run_prefix_uri or run_prefix()
    get_run_logger().info("training %s on %d images; artifacts to %s", backbone, len(ds.manifest), prefix)
    return train_steps(ds, cfg, prefix, on_missing_weights)
