"""Flow: validate the data, train every backbone in parallel, compare, report, upload."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from flows.steps import DEFAULT_BACKBONES, check_params, promote_best, run_prefix
from flows.train_backbone import train_backbone
from scene.experiment import TrainResult
from scene.metadata import CLASS_NAMES
from tasks import artifacts
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import settings


def _local(backbones: list[str], params: dict[str, Any], slots: int) -> list[TrainResult]:
    """Each backbone as a ``train-backbone`` subflow; at most ``slots`` at once, failures isolated."""
    log = get_run_logger()

    def one(b: str) -> TrainResult:
        try:
            return TrainResult(**train_backbone(backbone=b, **params))
        except Exception as err:  # a failed backbone never stops the others
            log.error("%s failed: %s: %s", b, type(err).__name__, err)
            return TrainResult(b, "failed", f"{type(err).__name__}: {err}", strategy=params["strategy"],
                               weights=params["weights"])

    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="backbone") as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, b) for b in backbones]
        return [f.result() for f in futures]


def _dispatch(backbones: list[str], params: dict[str, Any], deployment: str, poll: float = 3.0) -> list[TrainResult]:
    """One ``train-backbone`` flow run per backbone on the deployment's work pool; wait for all; collect."""
    log = get_run_logger()
    runs = {b: run_deployment(deployment, parameters={"backbone": b, **params}, timeout=0,
                              flow_run_name=f"{b}", tags=["scene", b]) for b in backbones}
    log.info("created %d %s flow runs: %s", len(runs), deployment, ", ".join(f"{b}={r.id}" for b, r in runs.items()))
    states: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(runs):
            for b, r in runs.items():
                if b not in states:
                    fr = client.read_flow_run(r.id)
                    if fr.state and fr.state.is_final():
                        states[b] = fr.state
                        log.info("%s finished: %s", b, fr.state.name)
            time.sleep(poll if len(states) < len(runs) else 0)
    results = []
    for b in backbones:
        res = artifacts.read_result(f"{params['run_prefix_uri'].rstrip('/')}/{b}/")
        if res is None or not states[b].is_completed():
            msg = states[b].message or states[b].name
            res = TrainResult(b, "failed", f"flow run {runs[b].id} {states[b].name}: {msg}",
                              strategy=params["strategy"], weights=params["weights"])
        results.append(res)
    return results


@flow(name="train-all", log_prints=True)
def train_all(
    data: str = "s3://scene-data/datasets/demo/",
    test: str | None = None,
    backbones: list[str] = DEFAULT_BACKBONES,
    classes: list[str] | None = None,
    weights: str = "imagenet",
    strategy: Literal["cached", "online"] = "cached",
    views: int = 2,
    epochs: int = 100,
    image_size: int = 150,
    finetune_layers: int = 0,
    mixed_precision: bool = False,
    on_missing_weights: Literal["random-init", "fail"] = "random-init",
    dispatch: Literal["local", "deployments"] = "local",
    deployment: str = "train-backbone/gpu",
    slots: int = 2,
    promote: bool = True,
    alpha: float = 0.05,
) -> dict:
    """Validate the data, train every backbone in parallel, compare them and upload every artifact."""
    log = get_run_logger()
    cfg = {"weights": weights, "strategy": strategy, "views": views, "epochs": epochs, "image_size": image_size,
           "finetune_layers": finetune_layers, "mixed_precision": mixed_precision}
    check_params(backbones, slots, **cfg)
    pointer = registry_tasks.read_champion() if promote else None
    ds = data_tasks.build_manifest(data, test, classes)
    report = data_tasks.validate(ds)
    prefix = run_prefix()
    manifest = data_tasks.publish_manifest(ds, report, prefix)
    log.info("training %s on %d images (%s dispatch); artifacts under %s", ", ".join(backbones), len(ds.manifest),
             dispatch, prefix)
    params = {**cfg, "manifest_uri": manifest["manifest.csv"], "classes": list(ds.class_names or CLASS_NAMES),
              "on_missing_weights": on_missing_weights, "run_prefix_uri": prefix}
    if dispatch == "local":
        results = _local(backbones, params, slots)
    else:
        results = _dispatch(backbones, params, deployment)
    out_dir = Path(settings().work_dir) / "runs" / prefix.rstrip("/").rsplit("/", 1)[-1]
    comparison = artifacts.compare_and_publish(results, str(out_dir), prefix, manifest)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        log.error("%s failed: %s", r.backbone, r.error)
    if len(failed) == len(results):
        raise RuntimeError("every backbone failed: " + "; ".join(f"{r.backbone}: {r.error}" for r in failed))
    gated = promote_best(ds, results, pointer, prefix, alpha) if promote else {"promoted": False}
    return {"prefix": prefix, "comparison": comparison, "data_fingerprint": ds.fingerprint, "promotion": gated,
            "results": [r.to_dict() for r in results], "failed": [r.backbone for r in failed]}
