"""Flow: batch prediction over a prefix of (unlabelled) images with the champion model, results to CSV in S3."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from scene import registry
from scene.data import scope, storage
from scene.metadata import CLASS_NAMES
from scene.registry import integrity
from tasks import artifacts
from tasks import audit as audit_tasks
from tasks.common import FLOW_TIMEOUT_S, S3_RETRIES, S3_TIMEOUT_S, STEP_TIMEOUT_S, keeps_termination, s3, settings


@task(cache_policy=NO_CACHE, name="resolve model", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def resolve_model(model: str | None, dataset: str | None = None) -> tuple[str, list[str]]:
    """The local path and classes of the given model (path or s3:// URI to model.keras), or else of ``dataset``'s
    champion (without ``dataset``: the champion of the only dataset that has one; several is an error).

    A registered version (the champion, or ``.../<backbone>-<12 hex>/model.keras``) is downloaded only after
    its files match ``checksums.json`` and the version id (:func:`scene.registry.integrity.fetch_version`).
    """
    import json

    client, cfg = s3(), settings()
    if model is None:
        try:
            champ = registry.serving_champion(client, cfg.artifact_bucket, dataset)
        except registry.RegistryError as err:
            raise RuntimeError(f"{err}; or pass model=") from err
        get_run_logger().info("the champion of %s: %s", champ["data"], champ["version"])
        model = champ["model"]  # champion.json's model field: the one place the champion's path comes from
    log = get_run_logger()
    folder = model.rsplit("/", 1)[0]
    if storage.parse(model).is_s3 and integrity.is_version_uri(folder):
        local = _fetch_registered(client, folder) / "model.keras"
    elif storage.parse(model).is_s3:
        log.warning("%s is not a registered model version: no checksums to verify it against", model)
        local = Path(tempfile.mkdtemp(prefix="scene-model-")) / "model.keras"
        storage.download_file(model, local, client)
        config_uri = folder + "/config.json"
        if storage.exists(config_uri, client):
            storage.download_file(config_uri, local.with_name("config.json"), client)
    else:
        local = Path(model)
    cfg_file = local.with_name("config.json")
    classes = json.loads(cfg_file.read_text())["class_names"] if cfg_file.exists() else list(CLASS_NAMES)
    log.info("predicting with %s", model)
    return str(local), classes


def _fetch_registered(client: object, version_uri: str) -> Path:
    """A registered version's model.keras (and config.json when listed), verified, in a new temp folder."""
    dest = Path(tempfile.mkdtemp(prefix="scene-model-")) / "version"
    return integrity.fetch_version(client, version_uri, dest, names=["model.keras"], optional=["config.json"])


@task(cache_policy=NO_CACHE, name="predict images", timeout_seconds=STEP_TIMEOUT_S, **{**S3_RETRIES, "retries": 1})
def predict_images(model_path: str, classes: list[str], data: str, out: str) -> tuple[int, int]:
    """Classify every image under ``data``; unreadable images are listed in the CSV with their error."""
    from scene.model.network import load
    from scene.model.predict import predict_folder
    from tasks.common import Progress

    return predict_folder(load(model_path), data, out, classes, s3=s3(), progress=Progress())


def _classified(out: str) -> Any:
    """The rows of predictions.csv that were classified (``key`` column), for the drift check."""
    import io

    import pandas as pd

    df = pd.read_csv(io.BytesIO(storage.read_bytes(out, s3())), keep_default_na=False)
    return df[df["error"] == ""][["key"]].reset_index(drop=True)


@flow(name="predict", log_prints=True, timeout_seconds=FLOW_TIMEOUT_S, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
@keeps_termination
def predict(data: str = "s3://scene-data/incoming/", model: str | None = None, out: str | None = None,
            dataset: str | None = None) -> dict:
    """Classify a prefix of images with a dataset's champion (or a given model); write predictions.csv to S3."""
    scope.require_data_uri(data, settings(), prefixes=(settings().data_prefix, scope.PREDICT_PREFIX))
    out = out or f"s3://{settings().artifact_bucket}/predictions/{flow_run.get_id() or 'local'}/predictions.csv"
    scope.require_predictions_uri(out, settings())  # only under predictions/: never the registry nor a run folder
    if model is not None and dataset is not None:
        raise ValueError(f"pass model= or dataset= (whose champion predicts), not both; got model={model!r}, "
                         f"dataset={dataset!r}")
    facts = {"images under": data, "model": model or f"the champion of {dataset or 'the only dataset'}",
             "predictions": out}
    summary_id = artifacts.start_summary("predict", facts)  # first: listed above the task artifacts
    model_path, classes = resolve_model(model, dataset)
    n, bad = predict_images(model_path, classes, data, out)
    create_link_artifact(storage.presigned_url(out, s3()), link_text="predictions.csv", key="predictions",
                         description=f"expires after {storage.MAX_LINK_SECONDS // 3600} hour; {out}")
    get_run_logger().info("%d images classified, %d unreadable listed; %s", n, bad, out)
    drift = audit_tasks.drift_check(model_path, registry.serving_champion(s3(), settings().artifact_bucket,
                                    dataset) if model is None else None, _classified(out), f"predict batch {data}")
    artifacts.finish_prediction_summary(summary_id, {**facts, "model file": model_path, "classified": n,
                                                     "unreadable (listed in the CSV)": bad}, out)
    return {"predictions": out, "images": n, "unreadable": bad, "drift": drift}
