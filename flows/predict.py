"""Flows: batch prediction over a prefix of (unlabelled) images with the champion model, results to S3.

``predict`` with ``chunks=1`` writes one ``predictions.csv``, streamed (memory flat in the number of images). With
``chunks=K`` (2..16) it splits the listing into K chunks and starts one ``predict-chunk`` run per chunk on a work pool
(``chunk_deployment``); each streams its images into one Parquet + CSV part, and ``predict`` writes ``manifest.json``
of the parts (:mod:`scene.model.parts`). A chunk run that does not complete is predicted by ``predict`` itself.
"""

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


def model_uri(model: str | None, dataset: str | None = None) -> str:
    """``model``, or else the model URI of ``dataset``'s champion (without ``dataset``: the champion of the only
    dataset that has one; several is an error)."""
    if model is not None:
        return model
    try:
        champ = registry.serving_champion(s3(), settings().artifact_bucket, dataset)
    except registry.RegistryError as err:
        raise RuntimeError(f"{err}; or pass model=") from err
    get_run_logger().info("the champion of %s: %s", champ["data"], champ["version"])
    return champ["model"]  # champion.json's model field: the one place the champion's path comes from


@task(cache_policy=NO_CACHE, name="resolve model", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def resolve_model(model: str | None, dataset: str | None = None) -> tuple[str, list[str]]:
    """The local path and classes of the given model (path or s3:// URI to model.keras), or else of ``dataset``'s
    champion (:func:`model_uri`).

    A registered version (the champion, or ``.../<backbone>-<12 hex>/model.keras``) is downloaded only after
    its files match ``checksums.json`` and the version id (:func:`scene.registry.integrity.fetch_version`).
    """
    import json

    client = s3()
    model = model_uri(model, dataset)
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
    from scene.model.parts import predict_folder
    from tasks.common import Progress

    return predict_folder(load(model_path), data, out, classes, s3=s3(), progress=Progress())


@task(cache_policy=NO_CACHE, name="split listing", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def split_listing(data: str, folder: str, chunks: int) -> list[str]:
    """List ``data`` and write each chunk's keys under ``folder/listing/``; each listing file's sha256."""
    from scene.model import parts

    listed = parts.split_listing((key for key, _ in storage.list_files(data, s3())), folder, chunks, s3())
    get_run_logger().info("%d files under %s in %d chunks: %s", sum(n for n, _ in listed), data, chunks,
                          ", ".join(str(n) for n, _ in listed))
    return [digest for _, digest in listed]


@task(cache_policy=NO_CACHE, name="predict part", timeout_seconds=STEP_TIMEOUT_S, **{**S3_RETRIES, "retries": 1})
def predict_part(model_path: str, classes: list[str], folder: str, chunk: int, model: str) -> dict[str, Any]:
    """Predict one chunk's listed keys into its Parquet + CSV part (streamed); the part's record, which names its
    listing's sha256 and ``model`` (the model's URI)."""
    from dataclasses import asdict

    from scene.model import parts
    from scene.model.network import load
    from tasks.common import Progress

    listed, digest = parts.read_listing(parts.listing_uri(folder, chunk), s3())
    return asdict(parts.predict_part(load(model_path), listed, classes, folder, chunk, s3=s3(), progress=Progress(),
                                     source={"listing": digest, "model": model}))


@task(cache_policy=NO_CACHE, name="write manifest", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def write_manifest(folder: str, sources: list[dict[str, str]], classes: list[str],
                   facts: dict[str, Any]) -> dict[str, Any]:
    """``manifest.json`` of the chunks' parts (each must have its record, predicted from ``sources[i]``)."""
    from scene.model import parts

    found = [parts.read_part(folder, i, s3(), source=source) for i, source in enumerate(sources)]
    missing = [i for i, p in enumerate(found) if p is None]
    if missing:
        raise parts.PartError(f"{folder}: chunks {missing} have no part record of this listing and model; predict "
                              "them again")
    return parts.write_manifest(folder, [p for p in found if p is not None], class_names=classes, facts=facts,
                                s3=s3())


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
            dataset: str | None = None, chunks: int = 1, chunk_deployment: str = "predict-chunk/gpu",
            start_timeout_s: float = 1800.0, timeout_s: float = 6 * 3600.0) -> dict:
    """Classify a prefix of images with a dataset's champion (or a given model); write predictions.csv to S3.

    ``chunks`` > 1: one ``chunk_deployment`` run per chunk writes a Parquet + CSV part under ``out``'s folder, and
    this run writes their ``manifest.json`` there (no single CSV). ``start_timeout_s``/``timeout_s``: how long a chunk
    run may wait for a worker (when none polls its pool) and run.
    """
    scope.require_data_uri(data, settings(), prefixes=(settings().data_prefix, scope.PREDICT_PREFIX))
    out = out or f"s3://{settings().artifact_bucket}/predictions/{flow_run.get_id() or 'local'}/predictions.csv"
    scope.require_predictions_uri(out, settings())  # only under predictions/: never the registry nor a run folder
    if model is not None and dataset is not None:
        raise ValueError(f"pass model= or dataset= (whose champion predicts), not both; got model={model!r}, "
                         f"dataset={dataset!r}")
    from scene.model import parts

    parts.require_chunks(chunks)
    folder = out.rsplit("/", 1)[0] + "/"
    result = parts.manifest_uri(folder) if chunks > 1 else out
    facts = {"images under": data, "model": model or f"the champion of {dataset or 'the only dataset'}",
             "predictions": result, **({"chunks": f"{chunks} on {chunk_deployment}"} if chunks > 1 else {})}
    summary_id = artifacts.start_summary("predict", facts)  # first: listed above the task artifacts
    source = model_uri(model, dataset)  # the champion's pointer is read once; chunk runs get this URI
    model_path, classes = resolve_model(source)
    if chunks > 1:
        n, bad = _predict_in_chunks(data, source, model_path, classes, folder, chunks, chunk_deployment,
                                    start_timeout_s, timeout_s, facts)
        new_rows = parts.sample_classified(result, 500, s3())
    else:
        n, bad = predict_images(model_path, classes, data, out)
        create_link_artifact(storage.presigned_url(out, s3()), link_text="predictions.csv", key="predictions",
                             description=f"expires after {storage.MAX_LINK_SECONDS // 3600} hour; {out}")
        new_rows = _classified(out)
    get_run_logger().info("%d images classified, %d unreadable listed; %s", n, bad, result)
    drift = audit_tasks.drift_check(model_path, registry.serving_champion(s3(), settings().artifact_bucket,
                                    dataset) if model is None else None, new_rows, f"predict batch {data}")
    artifacts.finish_prediction_summary(summary_id, {**facts, "model file": model_path, "classified": n,
                                                     "unreadable (rows with their error)": bad}, result)
    return {"predictions": result, "images": n, "unreadable": bad, "drift": drift}


def _predict_in_chunks(data: str, model: str, model_path: str, classes: list[str], folder: str, chunks: int,
                       deployment: str, start_timeout_s: float, timeout_s: float,
                       facts: dict[str, Any]) -> tuple[int, int]:
    """Split the listing, run one ``deployment`` run per chunk, predict here any chunk whose run did not leave its
    part, write the manifest; (classified, unreadable)."""
    from flows import dispatching
    from scene.model import parts

    sources = [{"listing": digest, "model": model} for digest in split_listing(data, folder, chunks)]
    if not storage.parse(model).is_s3:
        get_run_logger().warning("model %s is a local path: chunk runs on other machines cannot read it (pass an "
                                 "s3:// model or leave model unset for the champion)", model)
    dispatching.run_chunks(deployment, chunks, {"model": model, "folder": folder, "chunks": chunks},
                           label="predict", tags=["scene", "predict-chunk"], redo="this run predicts its images",
                           start_timeout_s=start_timeout_s, timeout_s=timeout_s)
    for i, source in enumerate(sources):
        if parts.read_part(folder, i, s3(), source=source) is None:  # its run left no part of this listing and model
            predict_part(model_path, classes, folder, i, model)
    doc = write_manifest(folder, sources, classes, {"data": data, "model": model})
    create_link_artifact(storage.presigned_url(parts.manifest_uri(folder), s3()), link_text="manifest.json",
                         key="predictions", description=f"{doc['chunks']} parts, {doc['rows']} rows; {folder}")
    return int(doc["classified"]), int(doc["unreadable"])


@flow(name="predict-chunk", log_prints=True, timeout_seconds=FLOW_TIMEOUT_S,
      on_failure=[artifacts.summary_on_failure], on_crashed=[artifacts.summary_on_failure],
      on_cancellation=[artifacts.summary_on_failure])
@keeps_termination
def predict_chunk(model: str, folder: str, chunk: int, chunks: int) -> dict:
    """Predict chunk ``chunk`` (0-based) of ``chunks`` of a prediction folder's listing (written by ``predict``)
    into its Parquet + CSV part there."""
    scope.require_predictions_folder(folder, settings())
    if not 0 <= chunk < chunks:
        raise ValueError(f"predict-chunk: chunk={chunk} is invalid for chunks={chunks}; pass 0..{chunks - 1}")
    facts = {"model": model, "chunk": f"{chunk + 1} of {chunks}", "folder": folder}
    summary_id = artifacts.start_summary("predict-chunk", facts)
    model_path, classes = resolve_model(model)
    part = predict_part(model_path, classes, folder, chunk, model)
    get_run_logger().info("chunk %d/%d: %d classified, %d unreadable listed; %s", chunk + 1, chunks,
                          part["classified"], part["unreadable"], part["files"]["parquet"]["uri"])
    artifacts.finish_chunk_summary(summary_id, {**facts, "classified": part["classified"],
                                                "unreadable": part["unreadable"],
                                                "part": part["files"]["parquet"]["uri"]}, "predict-chunk")
    return part
