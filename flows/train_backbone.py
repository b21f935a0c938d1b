"""Flow: train, evaluate, report and upload one backbone (locally or on its own GPU worker)."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from flows.steps import run_prefix, train_steps
from scene.experiment import TrainResult
from scene.metadata import CLASS_NAMES
from scene.train import TrainConfig
from tasks import artifacts
from tasks import data as data_tasks


@flow(name="train-backbone", log_prints=True, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
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
    mirror: bool = False,
    on_missing_weights: Literal["random-init", "fail"] = "fail",
    run_prefix_uri: str | None = None,
) -> dict:
    """Train one backbone on a published manifest (or build one from ``data``) and upload its artifacts."""
    facts = {"backbone": backbone, "data": manifest_uri or data, "weights": weights, "strategy": strategy,
             "epochs": epochs, "image size": image_size}
    summary_id = artifacts.start_summary("train-backbone", facts)  # first: listed above the task artifacts
    cfg = TrainConfig(backbone=backbone, weights=weights, strategy=strategy, views=views, epochs=epochs,
                      image_size=image_size, finetune_layers=finetune_layers, mixed_precision=mixed_precision,
                      mirror=mirror)
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
    result = train_steps(ds, cfg, prefix, on_missing_weights)
    artifacts.finish_training_summary(summary_id, "train-backbone", {**facts, "images": len(ds.manifest)},
                                      [TrainResult(**result)], {"note": "decided by the run that started this one "
                                      "(train-all or retrain), against the dataset's champion"}, prefix)
    return result
