"""Flow: retrain a dataset (or every champion's dataset), register the models, promote a significantly better one.

Each dataset has its own champion in the registry. An event (``scene.data.arrived``) names the dataset root that
changed: its challengers are gated only against that dataset's champion. The weekly schedule passes no data: it
retrains the dataset of every champion (with ``only_if_changed``, only those whose data changed since).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task

from flows.steps import DEFAULT_BACKBONES, check_params, preset_values, promote_best, run_prefix, train_steps
from scene import registry, storage
from scene.experiment import TrainResult
from scene.train import TrainConfig
from tasks import artifacts
from tasks import audit as audit_tasks
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import s3, settings


@task(name="read champions", retries=3, retry_delay_seconds=5)
def read_champions() -> dict[str, dict[str, Any]]:
    """``{dataset URI: champion document}`` for every dataset that has a champion."""
    return registry.champions(s3(), settings().artifact_bucket)


def _previous_manifest(champ: dict[str, Any] | None) -> Any:
    """The champion's ``manifest.csv`` (its splits stay sticky, new images are counted), or None."""
    if not champ:
        return None
    uri = champ["uri"].rstrip("/") + "/manifest.csv"
    return data_tasks.manifest_frame(uri) if storage.exists(uri, s3()) else None


def _retrain_dataset(data: str, test: str | None, backbones: list[str] | None, cfg: dict[str, Any], *,
                     prefix: str, alpha: float, only_if_changed: bool, on_missing_weights: str,
                     audit_labels: bool = False) -> dict:
    """Train challengers on one dataset and gate the best against that dataset's champion (named in the result)."""
    log = get_run_logger()
    pointer = registry_tasks.read_champion(data)  # this dataset's champion only
    champ = pointer.champion
    backbones = backbones or ([champ["backbone"]] if champ else DEFAULT_BACKBONES)
    check_params(backbones, 1, **cfg)
    previous = _previous_manifest(champ)
    ds = data_tasks.build_manifest(data, test, previous=previous)
    champ_data = registry.get_version(s3(), settings().artifact_bucket, champ["version"]) if champ else {}
    if only_if_changed and champ and champ_data.get("data_fingerprint") == ds.fingerprint:
        log.info("%s unchanged since its champion %s was trained (fingerprint %s): nothing to do", data,
                 champ["version"], ds.fingerprint)
        return {"data": data, "skipped": "data unchanged", "champion": champ["version"],
                "data_fingerprint": ds.fingerprint}
    report = data_tasks.validate(ds, previous)
    if report.new_images is not None:
        log.info("%d images of %s are new since its champion's data", report.new_images, data)
    audit = audit_tasks.audit_data(ds, TrainConfig(backbone=backbones[0], **cfg), prefix, labels=audit_labels)
    new_rows = ds.manifest[~ds.manifest["sha256"].isin(previous["sha256"])] if previous is not None else ds.manifest[:0]
    drift = audit_tasks.drift_check(None, champ, new_rows, f"{len(new_rows)} new images of {data}")
    data_tasks.publish_manifest(ds, report, prefix)
    results = []
    for b in backbones:
        try:
            results.append(TrainResult(**train_steps(ds, TrainConfig(backbone=b, **cfg), prefix, on_missing_weights)))
        except Exception as err:  # one failed backbone does not stop the others
            log.error("%s on %s failed: %s", b, data, err)
            results.append(TrainResult(b, "failed", f"{type(err).__name__}: {err}"))
    gated = promote_best(ds, results, pointer, prefix, alpha)
    return {**gated, "data": data, "champion": champ["version"] if champ else None, "audit": audit, "drift": drift,
            "data_fingerprint": ds.fingerprint, "prefix": prefix, "results": [r.to_dict() for r in results]}


@flow(name="retrain-dataset", flow_run_name="retrain {data}", log_prints=True)
def retrain_dataset(data: str, test: str | None, backbones: list[str] | None, cfg: dict[str, Any], alpha: float,
                    only_if_changed: bool, on_missing_weights: str, audit_labels: bool = False) -> dict:
    """One dataset of a scheduled retraining, as a subflow: its own run id, artifact prefix and work folders."""
    return _retrain_dataset(data, test, backbones, cfg, prefix=run_prefix(), alpha=alpha,
                            only_if_changed=only_if_changed, on_missing_weights=on_missing_weights,
                            audit_labels=audit_labels)


@flow(name="retrain", log_prints=True, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
def retrain(
    data: str | None = None,
    test: str | None = None,
    backbones: list[str] | None = None,
    weights: str = "imagenet",
    strategy: Literal["cached", "online"] = "cached",
    views: int = 2,
    epochs: int = 100,
    image_size: int = 150,
    finetune_layers: int = 0,
    mirror: bool = False,
    preset: str | None = None,
    alpha: float = 0.05,
    only_if_changed: bool = False,
    on_missing_weights: Literal["random-init", "fail"] = "random-init",
    new_objects: int = 0,
    audit_labels: bool = False,
) -> dict:
    """Retrain ``data`` against its own champion; without ``data``, retrain every champion's dataset."""
    summary_id = artifacts.start_summary("retrain", {"data": data or "every champion's dataset", "backbones": ", ".join(
        backbones or ["the champion's"]), "weights": weights, "epochs": epochs})  # first: above the task artifacts
    log = get_run_logger()
    if preset:  # a named recipe fills every parameter left at its default
        v = preset_values(preset, backbones=backbones, views=views, epochs=epochs, image_size=image_size, mirror=mirror)
        backbones, views, epochs, image_size, mirror = (v[k] for k in ("backbones", "views", "epochs", "image_size",
                                                                       "mirror"))
    cfg = {"weights": weights, "strategy": strategy, "views": views, "epochs": epochs, "image_size": image_size,
           "finetune_layers": finetune_layers, "mirror": mirror}
    check_params(backbones or DEFAULT_BACKBONES, 1, **cfg)
    opts = {"alpha": alpha, "only_if_changed": only_if_changed, "on_missing_weights": on_missing_weights,
            "audit_labels": audit_labels}
    if data is not None:
        if new_objects:
            log.info("retraining after %d new objects under %s", new_objects, data)
        result = _retrain_dataset(data, test, backbones, cfg, prefix=run_prefix(), **opts)
        artifacts.finish_retrain_summary(summary_id, {data: result})
        return result
    if test is not None:
        raise ValueError(f"test={test!r} without data: pass the data root it belongs to as data=, or neither "
                         "(then each champion's dataset is retrained with its own test split)")
    champs = read_champions()
    if not champs:
        log.warning("no dataset has a champion yet, so there is nothing to retrain: run train-all, or pass data=")
        return {"skipped": "no champion", "datasets": {}}
    log.info("retraining the datasets of %d champions: %s", len(champs), ", ".join(sorted(champs)))
    out: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for uri, champ in sorted(champs.items()):  # one subflow per dataset; a failed one does not stop the others
        state = retrain_dataset(uri, champ.get("test"), backbones, cfg, return_state=True, **opts)
        if state.is_completed():
            out[uri] = state.result()
        else:
            failed[uri] = state.message or state.name
            log.error("retraining %s failed: %s", uri, failed[uri])
    if failed:
        raise RuntimeError("retraining failed for " + "; ".join(f"{u}: {e}" for u, e in failed.items()))
    artifacts.finish_retrain_summary(summary_id, out)
    return {"datasets": out}
