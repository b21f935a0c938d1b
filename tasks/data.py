"""Data tasks: build the manifest, validate it (great-expectations), publish both."""

from __future__ import annotations

import io
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from scene.data import packs, storage
from scene.data.dataset import Dataset, build_dataset, load_dataset
from scene.data.validation import ValidationReport, validate_manifest
from tasks.common import S3_RETRIES, S3_TIMEOUT_S, STEP_TIMEOUT_S, s3, settings


class DataValidationFailed(RuntimeError):
    """The validation suite failed; the message lists each failing check."""


@task(cache_policy=NO_CACHE, name="build manifest", timeout_seconds=STEP_TIMEOUT_S, **S3_RETRIES)
def build_manifest(data: str, test: str | None = None, classes: list[str] | None = None,
                   previous: Any = None) -> Dataset:
    """List every image under ``data`` (and ``test``); read, hash and check the new or changed ones.

    ``previous``: an earlier manifest of the same data (e.g. the champion's): its images keep their splits, and
    its rows are reused for objects whose ETag and size are unchanged (``ds.objects_read`` counts the reads).
    """
    log = get_run_logger()
    log.info("Listing %s%s", data, f" and {test}" if test else "")
    ds = build_dataset(data, test, class_names=classes, s3=s3(), previous=previous,
                       packer=packs.writer_for(data, settings().artifact_bucket, s3()),
                       progress=lambda d, t: log.info("read %d/%d images", d, t) if d == t or d % 2000 == 0 else None)
    log.info("%d usable images, %d skipped; read %d objects, reused %d rows of the previous manifest (ETag and "
             "size unchanged); %d image packs written; data fingerprint %s", len(ds.manifest), len(ds.rejected),
             ds.objects_read, ds.rows_reused, ds.packs_written, ds.fingerprint)
    return ds


@task(cache_policy=NO_CACHE, name="load manifest", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def load_manifest(manifest_uri: str, classes: list[str]) -> Dataset:
    """A manifest another flow run already built and uploaded."""
    return load_dataset(manifest_uri, s3=s3(), class_names=classes, source=manifest_uri)


@task(cache_policy=NO_CACHE, name="validate data", timeout_seconds=STEP_TIMEOUT_S)
def validate(ds: Dataset, previous: Any = None) -> ValidationReport:
    """Run the suite; publish it as a markdown artifact; stop the run with a readable summary if it fails."""
    log = get_run_logger()
    report = validate_manifest(ds.manifest, ds.rejected, ds.class_names, previous=previous)
    create_markdown_artifact(report.summary_markdown(), key="data-validation",
                             description=f"Data validation: {'passed' if report.success else 'FAILED'}")
    for w in report.warnings():
        log.warning("data warning: %s", w)
    if not report.success:
        lines = "\n  ".join(report.failures())
        raise DataValidationFailed(f"the data failed validation, nothing was trained:\n  {lines}")
    log.info("Data validation passed: %d images, %d checks", report.total_images, len(report.checks))
    return report


@task(cache_policy=NO_CACHE, name="publish manifest", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def publish_manifest(ds: Dataset, report: ValidationReport, prefix: str) -> dict[str, str]:
    """Upload ``manifest.csv``, ``rejected.csv`` and ``validation.json`` under ``prefix``."""
    import json

    client = s3()
    out = {}
    for name, body in (("manifest.csv", ds.manifest.to_csv(index=False)),
                       ("rejected.csv", ds.rejected.to_csv(index=False)),
                       ("validation.json", json.dumps(report.to_dict(), indent=2, default=str))):
        uri = prefix.rstrip("/") + "/" + name
        storage.write_bytes(uri, body.encode() if isinstance(body, str) else body, client)
        out[name] = uri
    return out


def manifest_frame(uri: str) -> Any:
    """Read a manifest CSV (for comparing with a previous one)."""
    import pandas as pd

    return pd.read_csv(io.BytesIO(storage.read_bytes(uri, s3())), keep_default_na=False, dtype={"etag": str})
