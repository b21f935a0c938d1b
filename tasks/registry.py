"""Registry tasks: register versions, score the champion on today's test images, run the promotion gate."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from scene import registry, storage
from scene.dataset import Dataset
from scene.experiment import TrainResult, test_predictions
from scene.train import predict
from tasks.common import s3, settings


@task(name="read champion", retries=3, retry_delay_seconds=5)
def read_champion(dataset: str | None = None) -> registry.Pointer:
    """The champion pointer of ``dataset`` and its ETag (without: the newest champion of any dataset).

    The gate promotes only if the pointer is unchanged since it was read.
    """
    return registry.read_champion(s3(), settings().artifact_bucket, dataset=dataset)


@task(name="register model", task_run_name="register {result.backbone}", retries=3, retry_delay_seconds=5)
def register(result: TrainResult, ds: Dataset, run_prefix: str) -> registry.ModelVersion:
    """Upload a trained backbone folder (with its manifest) as a content-addressed version of ``ds``'s lineage.

    A backbone trained on another worker is fetched from the run's artifacts in S3 first.
    """
    out = Path(result.out_dir)
    if not (out / "model.keras").is_file():
        out = Path(tempfile.mkdtemp(prefix=f"scene-{result.backbone}-"))
        client = s3()
        src = f"{run_prefix.rstrip('/')}/{result.backbone}/"
        for uri, _ in storage.list_files(src, client):
            storage.download_file(uri, storage.safe_join(out, uri[len(src):], uri), client)
    ds.manifest.to_csv(out / "manifest.csv", index=False)
    version = registry.register(s3(), settings().artifact_bucket, out, result.backbone,
                                pd.read_csv(out / "test_predictions.csv"), dataset=ds.source)
    get_run_logger().info("registered %s (dataset %s) at %s", version.version, version.dataset, version.uri)
    return version


@task(name="read test predictions", retries=2, retry_delay_seconds=5)
def test_predictions_of(version: registry.ModelVersion) -> pd.DataFrame:
    """A registered version's per-image test outcome."""
    return pd.read_csv(io.BytesIO(storage.read_bytes(version.uri.rstrip("/") + "/test_predictions.csv", s3())))


@task(name="score champion", retries=2, retry_delay_seconds=5)
def score_champion(pointer: registry.Pointer, ds: Dataset) -> pd.DataFrame | None:
    """The champion's per-image outcome on the current test split (None without a champion).

    Its files are fetched through :func:`scene.integrity.fetch_version`: only what checksums.json lists,
    each verified, model.keras against the version id.
    """
    if pointer.champion is None:
        return None
    from scene.integrity import fetch_version
    from scene.model import load

    client = s3()
    folder = fetch_version(client, pointer.champion["uri"], Path(tempfile.mkdtemp(prefix="scene-champion-")) / "v",
                           names=[])
    model = load(str(folder / "model.keras"))
    preds = predict(model, ds.split("test"), int(model.input_shape[1]), split="test", s3=client)
    get_run_logger().info("champion %s scored on %d current test images", pointer.champion["version"], len(preds.keys))
    return test_predictions(preds, ds)


@task(name="promotion gate")
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
