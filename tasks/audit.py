"""Audit tasks: near-duplicates / leakage and label issues in the validate step; drift for retrain and predict."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from scene.audit import drift as drift_lib
from scene.audit.duplicates import DEFAULT_THRESHOLD, audit_duplicates
from scene.audit.labels import audit_labels
from scene.audit.source import cached_features, model_outputs
from scene.data import storage
from scene.data.dataset import Dataset
from scene.model.backbones import WeightsUnavailable
from scene.train import fit
from scene.train.experiment import fetch_verified
from tasks.common import STEP_TIMEOUT_S, Progress, s3, settings
from tasks.data import DataValidationFailed

DRIFT_EVENT = "scene.data.drift"
TABLE_ROWS = 200  # rows of a table artifact (the CSV under the run prefix has them all)


def _put_csv(df: Any, uri: str) -> str:
    storage.write_bytes(uri, df.to_csv(index=False).encode(), s3())
    return uri


def _thumbs(keys: list[str]) -> dict[str, str]:
    """Presigned links to S3 images (the UI shows them as thumbnails); local paths get none."""
    client = s3()
    return {k: storage.presigned_url(k, client) for k in keys if storage.parse(k).is_s3}


@task(name="audit data", cache_policy=NO_CACHE, timeout_seconds=STEP_TIMEOUT_S)
def audit_data(ds: Dataset, cfg: fit.TrainConfig, prefix: str, labels: bool = False,
               threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Near-duplicate audit always (train/test leakage above the limit stops the run), label audit on request.

    Features are the plain-view features of ``cfg``'s backbone from the shared cache (training reuses them).
    """
    log = get_run_logger()
    try:
        cfg_s = settings()
        weights = fit.weights_for(cfg, s3=s3(), mirror=f"s3://{cfg_s.artifact_bucket}/{cfg_s.weights_mirror_prefix}")
    except WeightsUnavailable as err:
        log.warning("data audits skipped: %s (features of an untrained network would find nothing real)", err)
        return {"skipped": str(err)}
    if weights.random_init:
        log.warning("data audits skipped: %s has random-init weights; its features mean nothing", cfg.backbone)
        return {"skipped": f"{cfg.backbone}: random-init weights"}
    x = cached_features(ds.manifest, cfg, weights, settings().feature_cache, s3=s3(), progress=Progress())
    dup = audit_duplicates(x, ds.manifest, threshold)
    out: dict[str, Any] = {"near_duplicates": len(dup.pairs), "leaked_test_images": dup.leaked_test_images,
                           "near_duplicates_csv": _put_csv(dup.pairs, f"{prefix.rstrip('/')}/near_duplicates.csv")}
    create_table_artifact(dup.pairs.head(TABLE_ROWS).round(4).to_dict("records"), key="near-duplicates",
                          description=f"near-duplicate pairs ({len(dup.pairs)}; cosine ≥ {threshold:.2f})")
    create_markdown_artifact(f"# Near-duplicates\n\n{dup.markdown()}", key="near-duplicates-summary")
    failures, warnings = dup.messages()
    for w in warnings:
        log.warning("data audit: %s", w)
    if labels:
        try:
            out.update(_label_audit(x, ds, cfg, prefix))
        except ValueError as err:  # e.g. a class with fewer images than folds: the audit is advice, not a gate
            log.warning("label audit skipped: %s", err)
            out["label_issues"] = f"skipped: {err}"
    if failures:
        raise DataValidationFailed("near-duplicate leakage, nothing was trained:\n  " + "\n  ".join(failures))
    return out


def _label_audit(x: Any, ds: Dataset, cfg: fit.TrainConfig, prefix: str) -> dict[str, Any]:
    audit = audit_labels(x, ds.manifest, ds.class_names, seed=cfg.seed)
    uri = _put_csv(audit.issues, f"{prefix.rstrip('/')}/label_issues.csv")
    create_table_artifact(audit.issues.head(TABLE_ROWS).round(4).to_dict("records"), key="label-issues",
                          description=f"likely mislabelled images ({audit.flagged} of {audit.audited})")
    thumbs = _thumbs(audit.issues["key"].head(24).tolist())
    gallery = [f"![{r.label} → {r.suggested}]({thumbs[r.key]}) `{r.key}` {r.label} → **{r.suggested}**"
               for r in audit.issues.head(24).itertuples() if r.key in thumbs]
    create_markdown_artifact("# Label issues\n\n" + audit.markdown() + ("\n\n### Thumbnails\n\n" + "\n\n".join(gallery)
                                                                        if gallery else ""),
                             key="label-issues-summary")
    get_run_logger().info("label audit: %d of %d images look mislabelled (%s)", audit.flagged, audit.audited, uri)
    return {"label_issues": audit.flagged, "label_issues_csv": uri}


def _reference_uri(version: str) -> str:
    return f"s3://{settings().artifact_bucket}/drift/{version}/reference.npz"


@task(name="drift check", cache_policy=NO_CACHE, timeout_seconds=STEP_TIMEOUT_S)
def drift_check(model_path: str | None, champion: dict[str, Any] | None, new_rows: Any, subject: str,
                max_images: int = 500) -> dict[str, Any] | None:
    """New images vs the champion's training images: features (KS on principal components) and class mix.

    ``model_path``: the champion's model.keras already on disk, or None to fetch (and verify) it.

    The reference (a sample of the champion's training images through its own network) is computed once per
    champion and kept at ``s3://<artifacts>/drift/<version>/reference.npz``. Emits ``scene.data.drift`` on drift.
    """
    log = get_run_logger()
    if champion is None or len(new_rows) < 2:
        log.info("drift check skipped: %s", "no champion" if champion is None else f"{len(new_rows)} new images")
        return None
    try:
        return _drift(model_path, champion, new_rows, subject, max_images)
    except Exception as err:  # drift is advice: it never stops a retraining or a prediction
        log.warning("drift check failed (%s: %s); continuing without it", type(err).__name__, err)
        return {"error": f"{type(err).__name__}: {err}"}


def _drift(model_path: str | None, champion: dict[str, Any], new_rows: Any, subject: str,
           max_images: int) -> dict[str, Any]:
    from scene.model.network import load

    log = get_run_logger()
    client = s3()
    if model_path is None:  # the champion's verified model.keras
        model_path = str(fetch_verified(client, champion["uri"], "drift") / "model.keras")
    model = load(model_path)
    ref_uri = _reference_uri(champion["version"])
    if storage.exists(ref_uri, client):
        ref = drift_lib.Reference.from_bytes(storage.read_bytes(ref_uri, client))
    else:
        ref = _make_reference(model, champion, max_images, Path(model_path).with_name("config.json"))
        storage.write_bytes(ref_uri, ref.to_bytes(), client)
    rows = new_rows.sample(min(max_images, len(new_rows)), random_state=0) if len(new_rows) > max_images else new_rows
    x, probs = model_outputs(model, rows, s3=client, progress=Progress())
    result = drift_lib.compare(ref, x, probs.argmax(1))
    create_markdown_artifact(f"# Drift: {subject}\n\n{result.markdown()}", key="drift",
                             description="DRIFT" if result.drifted else "no drift")
    if result.drifted:
        emit_event(event=DRIFT_EVENT, resource={"prefect.resource.id": f"scene.dataset.{champion.get('dataset', '')}",
                                                "scene.champion": champion["version"]},
                   payload={"subject": subject, **result.to_dict()})
        log.warning("DRIFT in %s vs champion %s: %s", subject, champion["version"], "; ".join(result.reasons))
    return result.to_dict()


def _make_reference(model: Any, champion: dict[str, Any], max_images: int, config: Path) -> drift_lib.Reference:
    """A sample of the champion's training images (its manifest.csv) through the champion itself."""
    import pandas as pd

    client = s3()
    manifest = pd.read_csv(io.BytesIO(storage.read_bytes(champion["uri"].rstrip("/") + "/manifest.csv", client)),
                           keep_default_na=False)
    rows = manifest[manifest["split"] == "train"]
    rows = rows.sample(min(max_images, len(rows)), random_state=0)
    x, probs = model_outputs(model, rows, s3=client, progress=Progress())
    import json

    names = (json.loads(storage.read_bytes(str(config)))["class_names"] if storage.exists(str(config))
             else range(probs.shape[1]))
    names = tuple(str(n) for n in names)
    return drift_lib.fit_reference(x, probs.argmax(1), names, components=min(8, max(1, len(rows) // 2 - 1)))
