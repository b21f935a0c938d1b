"""The steps the flows share: per-backbone training, parameter checks, registering and gating models."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run

from scene.backbones import get_spec
from scene.dataset import Dataset
from scene.experiment import TrainResult
from scene.train import TrainConfig
from tasks import artifacts, training
from tasks import registry as registry_tasks
from tasks.common import settings, stable_hash

DEFAULT_BACKBONES = ["resnet50", "resnet101v2", "efficientnetb0", "vgg16"]


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


def check_params(backbones: list[str], slots: int, **cfg: Any) -> None:
    """Fail fast, before reading any data, on unknown backbones or bad parameters."""
    if not backbones:
        raise ValueError("backbones=[] — pass at least one of the registry's backbones")
    for b in backbones:
        get_spec(b)
        TrainConfig(backbone=b, **cfg)  # raises naming the bad parameter
    if slots < 1:
        raise ValueError(f"slots={slots} is invalid; pass 1 or more concurrent trainings")


def promote_best(ds: Dataset, results: list[TrainResult], pointer: Any, prefix: str, alpha: float) -> dict:
    """Register every trained model; gate the best usable one against the champion (as observed in ``pointer``)."""
    log = get_run_logger()
    versions = {r.backbone: registry_tasks.register(r, ds, prefix) for r in results if r.status != "failed"}
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        log.warning("no usable challenger (all failed or collapsed): the champion stays")
        return {"promoted": False, "reason": "no usable challenger"}
    best = max(ok, key=lambda r: r.metrics["test"]["f1_weighted"])
    champion_predictions = registry_tasks.score_champion(pointer, ds)
    challenger = versions[best.backbone]
    challenger_predictions = registry_tasks.test_predictions_of(challenger)
    decision = registry_tasks.gate(challenger, challenger_predictions, champion_predictions, pointer, alpha)
    return {"promoted": decision.promote, "decision": decision.to_dict(), "challenger": challenger.version}
