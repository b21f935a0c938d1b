"""The steps the flows share: per-backbone training, parameter checks, registering and gating models."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run

from scene.backbones import get_spec
from scene.dataset import Dataset
from scene.experiment import TrainResult
from scene.gate import select_challenger
from scene.presets import apply_preset
from scene.registry import Pointer
from scene.train import TrainConfig
from tasks import artifacts, training
from tasks import registry as registry_tasks
from tasks.common import settings

DEFAULT_BACKBONES = ["resnet50", "resnet101v2", "efficientnetb0", "vgg16"]


def run_prefix() -> str:
    """``s3://<artifact bucket>/runs/<this flow run's id>/``."""
    return f"s3://{settings().artifact_bucket}/runs/{flow_run.get_id() or 'local'}/"


def work_folder(work_dir: str, backbone: str) -> Path:
    """``<work>/<flow run id>/<backbone>``: concurrent runs on the same data never share a folder."""
    run_id = flow_run.get_id() or f"local-{uuid.uuid4().hex[:12]}"
    return Path(work_dir) / str(run_id) / backbone


def train_steps(ds: Dataset, cfg: TrainConfig, prefix: str, on_missing_weights: str) -> dict:
    """The per-backbone steps as tasks; returns the result as a dict."""
    started = time.time()
    s = settings()
    cfg = training.check_weights(cfg, on_missing_weights)
    out_dir = str(work_folder(s.work_dir, cfg.backbone))
    cache = s.feature_cache
    extracted = training.extract_features(ds, cfg, cache) if cfg.strategy == "cached" else None
    fitted = training.train_head(ds, cfg, out_dir, cache, extracted)
    fitted = training.finetune(ds, cfg, fitted)
    if extracted is not None:  # a cached training step carries the stats of the run that trained it
        fitted = dataclasses.replace(fitted, extract=extracted)
    preds, metrics = training.evaluate(ds, cfg, fitted, cache)
    result = training.report(ds, cfg, fitted, preds, metrics, out_dir, started, prefix)
    backbone_prefix = f"{prefix.rstrip('/')}/{cfg.backbone}/"
    artifacts.upload(out_dir, backbone_prefix, label=cfg.backbone)
    artifacts.write_result(result, backbone_prefix)
    return result.to_dict()


# the flows' defaults of the parameters a preset may fill (a preset never overrides a value changed from these)
PRESET_DEFAULTS = {"backbones": DEFAULT_BACKBONES, "views": 2, "epochs": 100, "image_size": 150, "mirror": False}


def preset_values(preset: str | None, **given: Any) -> dict[str, Any]:
    """``given`` (backbones, views, epochs, image_size, mirror) with a named preset filling the defaults."""
    defaults = PRESET_DEFAULTS if given["backbones"] is not None else {**PRESET_DEFAULTS, "backbones": None}
    return apply_preset(preset, given, defaults)


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
    """Register every trained model; gate the one best on *validation* against its dataset's champion.

    ``pointer`` is the champion pointer the flow read when it started; it is used only when it is the pointer
    of the challenger's dataset, else that dataset's pointer is read now. Test metrics play no part in the
    choice: the test split is used once, by the gate.
    """
    log = get_run_logger()
    versions = {r.backbone: registry_tasks.register(r, ds, prefix) for r in results if r.status != "failed"}
    best = select_challenger(results)
    if best is None:
        log.warning("no usable challenger (all failed or collapsed): the champion stays")
        return {"promoted": False, "reason": "no usable challenger"}
    challenger = versions[best.backbone]
    log.info("challenger %s: best validation F1 (weighted) %s among %d usable backbones", challenger.version,
             (best.metrics.get("val") or {}).get("f1_weighted"), sum(r.status == "ok" for r in results))
    if not isinstance(pointer, Pointer) or pointer.dataset != challenger.dataset:
        pointer = registry_tasks.read_champion(challenger.dataset)
    champion_predictions = registry_tasks.score_champion(pointer, ds)
    challenger_predictions = registry_tasks.test_predictions_of(challenger)
    decision = registry_tasks.gate(challenger, challenger_predictions, champion_predictions, pointer, alpha,
                                   list(ds.class_names))
    return {"promoted": decision.promote, "decision": decision.to_dict(), "challenger": challenger.version,
            "dataset": challenger.dataset, "decision_uri": challenger.uri + "decision.json"}
