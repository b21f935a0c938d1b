"""Registry tasks: register a trained version, score the champion on today's test images, run the promotion gate."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from scene import registry
from scene.data import storage
from scene.data.dataset import Dataset
from scene.train import experiment, recipe
from scene.train.experiment import TrainResult
from scene.train.params import TrainParams
from tasks.common import S3_RETRIES, S3_TIMEOUT_S, STEP_TIMEOUT_S, s3, settings


@task(cache_policy=NO_CACHE, name="read champion", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def read_champion(dataset: str | None = None) -> registry.Pointer:
    """The champion pointer of ``dataset`` and its ETag (without: the newest champion of any dataset).

    The gate promotes only if the pointer is unchanged since it was read.
    """
    return registry.read_champion(s3(), settings().artifact_bucket, dataset=dataset)


@task(cache_policy=NO_CACHE, name="read champions", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def read_champions() -> dict[str, dict[str, Any]]:
    """``{dataset URI: champion document}`` for every dataset that has a champion."""
    return registry.champions(s3(), settings().artifact_bucket)


@task(name="read champion's manifest", cache_policy=NO_CACHE, timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def previous_manifest(champion: dict[str, Any] | None) -> pd.DataFrame | None:
    """The champion's ``manifest.csv`` (its splits stay sticky, new images are counted), or None."""
    if not champion:
        return None
    uri = champion["uri"].rstrip("/") + "/manifest.csv"
    client = s3()
    if not storage.exists(uri, client):
        return None
    return pd.read_csv(io.BytesIO(storage.read_bytes(uri, client)), keep_default_na=False, dtype={"etag": str})


@task(cache_policy=NO_CACHE, name="read champion's recipe", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def champion_recipe(champion: dict[str, Any] | None, params: TrainParams) -> TrainParams:
    """``params`` with every field they do not set taken from the champion's ``config.json`` (its resolved training
    config; :func:`scene.train.recipe.with_recipe`); without a champion or config.json, ``params`` resolved."""
    doc, uri = None, None
    if champion:
        uri = champion["uri"].rstrip("/") + "/config.json"
        client = s3()
        doc = json.loads(storage.read_bytes(uri, client)) if storage.exists(uri, client) else None
    chosen = recipe.with_recipe(params, doc, uri or "config.json")
    if doc is not None:
        get_run_logger().info("training the recipe of champion %s (fields set explicitly win: %s): %s",
                              champion["version"], sorted(params.model_fields_set) or "none",  # type: ignore[index]
                              chosen.facts())
    return chosen


@task(cache_policy=NO_CACHE, name="read champion's data fingerprint", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def trained_on(champion: dict[str, Any]) -> str | None:
    """The data fingerprint the champion was trained on (from its registry entry)."""
    return registry.get_version(s3(), settings().artifact_bucket, champion["version"]).get("data_fingerprint")


@task(name="register model", task_run_name="register {result.backbone}", cache_policy=NO_CACHE,
      timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def register(result: TrainResult, ds: Dataset, test_predictions: pd.DataFrame,
             source: str | None = None) -> registry.ModelVersion:
    """Register the folder this worker just trained (its manifest.csv included) as a version of ``ds``'s lineage.

    ``test_predictions``: the run's per-image test outcome, in memory (the same rows as its test_predictions.csv).
    ``source``: the run's S3 folder of this backbone (already uploaded): files with the same sha256 there are
    copied inside the store (CopyObject) instead of uploaded again.
    """
    version = registry.register(s3(), settings().artifact_bucket, result.out_dir, result.backbone, test_predictions,
                                dataset=ds.source, source=source, test=ds.test_source)
    get_run_logger().info("registered %s (dataset %s) at %s", version.version, version.dataset, version.uri)
    return version


@task(cache_policy=NO_CACHE, name="read test predictions", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def test_predictions_of(version: registry.ModelVersion) -> pd.DataFrame:
    """A registered version's per-image test outcome."""
    return pd.read_csv(io.BytesIO(storage.read_bytes(version.uri.rstrip("/") + "/test_predictions.csv", s3())))


@task(cache_policy=NO_CACHE, name="score champion", timeout_seconds=STEP_TIMEOUT_S, **S3_RETRIES)
def score_champion(pointer: registry.Pointer, ds: Dataset) -> pd.DataFrame | None:
    """The champion's per-image outcome on the current test split (None without a champion).

    Its files are fetched through :func:`scene.registry.integrity.fetch_version`: only what checksums.json lists,
    each verified, model.keras against the version id.
    """
    if pointer.champion is None:
        return None
    scored = experiment.score_version(s3(), pointer.champion["uri"], ds)
    get_run_logger().info("champion %s scored on %d current test images", pointer.champion["version"], len(scored))
    return scored


@task(cache_policy=NO_CACHE, name="promotion gate", timeout_seconds=S3_TIMEOUT_S)
def gate(challenger: registry.ModelVersion, challenger_predictions: pd.DataFrame, champion_predictions: Any,
         pointer: registry.Pointer, alpha: float, class_names: list[str] | None = None,
         margin: float = registry.MARGIN) -> registry.Decision:
    """One-sided McNemar + per-class non-inferiority on the same test images, a fresh-process load check,
    then an atomic promotion; the decision is stored beside the version (decision.json, decision.md)."""
    decision = registry.gate(s3(), settings().artifact_bucket, challenger, challenger_predictions,
                             champion_predictions, observed=pointer, alpha=alpha, margin=margin,
                             class_names=class_names)
    create_markdown_artifact(f"# Promotion gate\n\n{decision.markdown()}\n\nStored at `{challenger.uri}decision.json`.",
                             key="promotion-decision",
                             description=f"{challenger.version}: {'promoted' if decision.promote else 'kept champion'}")
    get_run_logger().info("promotion gate: %s — %s", "PROMOTED" if decision.promote else "kept", decision.reason)
    return decision
