"""Flow: retrain on the data in the bucket, register the models, promote a significantly better one."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from flows.steps import DEFAULT_BACKBONES, check_params, promote_best, run_prefix, train_steps
from scene import registry, storage
from scene.experiment import TrainResult
from scene.train import TrainConfig
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import s3, settings


@flow(name="retrain", log_prints=True)
def retrain(
    data: str = "s3://scene-data/datasets/demo/",
    test: str | None = None,
    backbones: list[str] | None = None,
    weights: str = "imagenet",
    strategy: Literal["cached", "online"] = "cached",
    views: int = 2,
    epochs: int = 100,
    image_size: int = 150,
    finetune_layers: int = 0,
    alpha: float = 0.05,
    only_if_changed: bool = False,
    on_missing_weights: Literal["random-init", "fail"] = "random-init",
    new_objects: int = 0,
) -> dict:
    """Train challengers on the current data (features of known images come from the cache) and gate them."""
    log = get_run_logger()
    pointer = registry_tasks.read_champion()
    champ = pointer.champion
    backbones = backbones or ([champ["backbone"]] if champ else DEFAULT_BACKBONES)
    cfg = {"weights": weights, "strategy": strategy, "views": views, "epochs": epochs, "image_size": image_size,
           "finetune_layers": finetune_layers}
    check_params(backbones, 1, **cfg)
    if new_objects:
        log.info("retraining after %d new objects under %s", new_objects, data)
    ds = data_tasks.build_manifest(data, test)
    champ_data = registry.get_version(s3(), settings().artifact_bucket, champ["version"]) if champ else {}
    if only_if_changed and champ and champ_data.get("data_fingerprint") == ds.fingerprint:
        log.info("data unchanged since the champion %s was trained (fingerprint %s): nothing to do",
                 champ["version"], ds.fingerprint)
        return {"skipped": "data unchanged", "champion": champ["version"], "data_fingerprint": ds.fingerprint}
    previous = None
    if champ and storage.exists(champ["uri"].rstrip("/") + "/manifest.csv", s3()):
        previous = data_tasks.manifest_frame(champ["uri"].rstrip("/") + "/manifest.csv")
    report = data_tasks.validate(ds, previous)
    if report.new_images is not None:
        log.info("%d images are new since the champion's data", report.new_images)
    prefix = run_prefix()
    data_tasks.publish_manifest(ds, report, prefix)
    results = []
    for b in backbones:
        try:
            results.append(TrainResult(**train_steps(ds, TrainConfig(backbone=b, **cfg), prefix, on_missing_weights)))
        except Exception as err:  # one failed backbone does not stop the others
            log.error("%s failed: %s", b, err)
            results.append(TrainResult(b, "failed", f"{type(err).__name__}: {err}"))
    gated = promote_best(ds, results, pointer, prefix, alpha)
    return {**gated, "data_fingerprint": ds.fingerprint, "prefix": prefix, "results": [r.to_dict() for r in results]}
