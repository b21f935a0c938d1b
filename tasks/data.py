"""Data tasks: build the manifest, validate it (a great-expectations checkpoint with Data Docs), publish both."""

from __future__ import annotations

import io
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from scene.data import packs, storage
from scene.data.dataset import Dataset, build_dataset, load_dataset
from scene.data.validation import SUITE_NAME, ValidationReport, validate_and_publish
from tasks.common import S3_RETRIES, S3_TIMEOUT_S, STEP_TIMEOUT_S, run_prefix, s3, settings

DATASET_FILE = "dataset.json"  # beside a published manifest.csv: the roots and classes it was built from


class DataValidationFailed(RuntimeError):
    """The validation suite failed; the message lists each failing check."""


@task(cache_policy=NO_CACHE, name="build manifest", timeout_seconds=STEP_TIMEOUT_S, **S3_RETRIES)
def build_manifest(data: str, test: str | None = None, classes: list[str] | None = None,
                   previous: Any = None, reader: Any = None) -> Dataset:
    """List every image under ``data`` (and ``test``); read, hash and check the new or changed ones.

    ``previous``: an earlier manifest of the same data (e.g. the champion's): its images keep their splits, and
    its rows are reused for objects whose ETag and size are unchanged (``ds.objects_read`` counts the reads).
    ``reader``: ``reader(files, packer)`` reads the new or changed files some other way (the flows pass
    :func:`flows.dispatching.chunked_reader` for chunk runs); the manifest is the same either way.
    """
    log = get_run_logger()
    log.info("Listing %s%s", data, f" and {test}" if test else "")
    packer = packs.writer_for(data, settings().artifact_bucket, s3())
    ds = build_dataset(data, test, class_names=classes, s3=s3(), previous=previous, packer=packer,
                       read=(lambda files: reader(files, packer)) if reader else None,
                       progress=lambda d, t: log.info("read %d/%d images", d, t) if d == t or d % 2000 == 0 else None)
    log.info("%d usable images, %d skipped; read %d objects, reused %d rows of the previous manifest (ETag and "
             "size unchanged); %d image packs written; data fingerprint %s", len(ds.manifest), len(ds.rejected),
             ds.objects_read, ds.rows_reused, ds.packs_written, ds.fingerprint)
    return ds


@task(cache_policy=NO_CACHE, name="load manifest", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def load_manifest(manifest_uri: str) -> Dataset:
    """A manifest another flow run built and published, with the data root, test root and classes it was built
    from (its ``dataset.json``): a version trained on it registers under that data root, never under the run."""
    import json

    client = s3()
    about_uri = manifest_uri.rsplit("/", 1)[0] + "/" + DATASET_FILE
    if not storage.exists(about_uri, client):
        raise FileNotFoundError(f"{about_uri}: missing; a published manifest names its data root there (publish it "
                                "with tasks.data.publish_manifest, as train-all does)")
    try:
        about = json.loads(storage.read_bytes(about_uri, client))
        data, test, classes = about["data"], about.get("test"), about["class_names"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{about_uri}: not a dataset description ({err!r}); expected JSON with 'data', 'test' and "
                         "'class_names'; publish the manifest again with tasks.data.publish_manifest") from err
    ds = load_dataset(manifest_uri, s3=client, class_names=classes, source=data, test_source=test)
    if about.get("fingerprint") and about["fingerprint"] != ds.fingerprint:
        raise ValueError(f"{manifest_uri}: its fingerprint {ds.fingerprint} is not the {about['fingerprint']} that "
                         f"{about_uri} records; the manifest was changed after it was published")
    return ds


@task(cache_policy=NO_CACHE, name="validate data", timeout_seconds=STEP_TIMEOUT_S, **S3_RETRIES)
def validate(ds: Dataset, previous: Any = None, prefix: str | None = None) -> ValidationReport:
    """Run the checkpoint; publish its Data Docs under ``<prefix>data-docs/`` (default: this run's prefix) and the
    summary as a markdown artifact linking them; stop the run with a readable summary if the data failed."""
    log = get_run_logger()
    client = s3()
    report, published = validate_and_publish(ds.manifest, ds.rejected, ds.class_names, prefix or run_prefix(),
                                             client, previous=previous)
    summary = report.summary_markdown()
    if published:
        page = published.get("validation", published["index"])
        link = storage.presigned_url(page, client) if storage.parse(page).is_s3 else page
        summary += (f"\n## Data Docs\n\n[The row rules' great-expectations report]({link}) (suite "
                    f"`{SUITE_NAME}`; the link expires within the hour; the dataset-level checks are in the table "
                    f"above); the whole site: `{published['index']}`\n")
        log.info("Data Docs: %s", page)
    create_markdown_artifact(summary, key="data-validation",
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
    """Upload ``manifest.csv``, ``rejected.csv``, ``validation.json`` and ``dataset.json`` (the data root, test root,
    classes and fingerprint the manifest was built from) under ``prefix``."""
    import json

    client = s3()
    out = {}
    about = {"data": ds.source, "test": ds.test_source, "class_names": list(ds.class_names),
             "fingerprint": ds.fingerprint}
    for name, body in (("manifest.csv", ds.manifest.to_csv(index=False)),
                       (DATASET_FILE, json.dumps(about, indent=2)),
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
