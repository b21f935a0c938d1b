"""Registry tasks: register versions, score the champion on today's test images, run the promotion gate."""

from __future__ import annotations

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
def read_champion() -> registry.Pointer:
    """``champion.json`` and its ETag (the gate promotes only if it is unchanged)."""
    return registry.read_champion(s3(), settings().artifact_bucket)


@task(name="register model", task_run_name="register {result.backbone}", retries=3, retry_delay_seconds=5)
def register(result: TrainResult, ds: Dataset, run_prefix: str) -> registry.ModelVersion:
    """Upload a trained backbone folder (with its manifest) as a content-addressed registry version.

    A backbone trained on another worker is fetched from the run's artifacts in S3 first.
    """
    out = Path(result.out_dir)
    if not (out / "model.keras").is_file():
        out = Path(tempfile.mkdtemp(prefix=f"scene-{result.backbone}-"))
        client = s3()
        src = f"{run_prefix.rstrip('/')}/{result.backbone}/"
        for uri, _ in storage.list_files(src, client):
            storage.download_file(uri, out / uri[len(src):], client)
    ds.manifest.to_csv(out / "manifest.csv", index=False)
    version = registry.register(s3(), settings().artifact_bucket, out, result.backbone,
                                pd.read_csv(out / "test_predictions.csv"))
    get_run_logger().info("registered %s at %s", version.version, version.uri)
    return version


@task(name="read test predictions", retries=2, retry_delay_seconds=5)
def test_predictions_of(version: registry.ModelVersion) -> pd.DataFrame:
    """A registered version's per-image test outcome."""
    import io

    return pd.read_csv(io.BytesIO(storage.read_bytes(version.uri.rstrip("/") + "/test_predictions.csv", s3())))


@task(name="score champion", retries=2, retry_delay_seconds=5)
def score_champion(pointer: registry.Pointer, ds: Dataset) -> pd.DataFrame | None:
    """The champion's per-image outcome on the current test split (None without a champion)."""
    if pointer.champion is None:
        return None
    from scene.model import load

    uri = pointer.champion["uri"].rstrip("/") + "/model.keras"
    local = Path(tempfile.mkdtemp(prefix="scene-champion-")) / "model.keras"
    storage.download_file(uri, local, s3())
    model = load(str(local))
    preds = predict(model, ds.split("test"), int(model.input_shape[1]), split="test", s3=s3())
    get_run_logger().info("champion %s scored on %d current test images", pointer.champion["version"], len(preds.keys))
    return test_predictions(preds, ds)


@task(name="promotion gate")
def gate(challenger: registry.ModelVersion, challenger_predictions: pd.DataFrame, champion_predictions: Any,
         pointer: registry.Pointer, alpha: float) -> registry.Decision:
    """McNemar on the same test images; promote atomically when the challenger is significantly better."""
    if champion_predictions is None:
        ours, theirs = challenger_predictions["correct"].astype(bool).to_numpy(), None
    else:
        ours, theirs = registry.pair(challenger_predictions, champion_predictions)
    decision = registry.gate(s3(), settings().artifact_bucket, challenger, ours, theirs, observed=pointer,
                             alpha=alpha)
    create_markdown_artifact(f"# Promotion gate\n\n{decision.markdown()}", key="promotion-decision",
                             description=f"{challenger.version}: {'promoted' if decision.promote else 'kept champion'}")
    card = challenger.uri.rstrip("/") + "/model_card.md"
    client = s3()
    if storage.exists(card, client):  # the decision becomes part of the model card
        text = storage.read_bytes(card, client).decode()
        if "## Promotion decision" not in text:
            storage.write_bytes(card, (text + "\n\n## Promotion decision\n\n" + decision.markdown() + "\n").encode(),
                                client)
    get_run_logger().info("promotion gate: %s — %s", "PROMOTED" if decision.promote else "kept", decision.reason)
    return decision
