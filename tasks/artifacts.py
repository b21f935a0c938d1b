"""Artifact tasks: upload to S3 with checksums, compare backbones, publish tables and reports to the UI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from scene import storage
from scene.experiment import TrainResult, compare
from tasks.common import s3


@task(name="upload artifacts", task_run_name="upload {label}", retries=3, retry_delay_seconds=[2, 10, 30])
def upload(local_dir: str, prefix: str, label: str = "") -> list[dict[str, Any]]:
    """Upload a folder (multipart for large files, sha256 recorded); return ``[{uri, sha256, bytes}]``."""
    uploaded = storage.upload_dir(local_dir, prefix, s3())
    get_run_logger().info("uploaded %d files (%.1f MB) to %s", len(uploaded),
                          sum(u["bytes"] for u in uploaded) / 1e6, prefix)
    return uploaded


@task(name="write result", retries=3, retry_delay_seconds=5)
def write_result(result: TrainResult, prefix: str) -> str:
    """``result.json`` beside a backbone's artifacts: how a dispatching flow collects it."""
    uri = prefix.rstrip("/") + "/result.json"
    storage.write_bytes(uri, json.dumps(result.to_dict(), indent=2, default=str).encode(), s3())
    return uri


@task(name="read result", retries=3, retry_delay_seconds=5)
def read_result(prefix: str) -> TrainResult | None:
    """The ``result.json`` a ``train-backbone`` run wrote, or None when it wrote none."""
    uri = prefix.rstrip("/") + "/result.json"
    client = s3()
    if not storage.exists(uri, client):
        return None
    return TrainResult(**json.loads(storage.read_bytes(uri, client)))


@task(name="compare backbones")
def compare_and_publish(results: list[TrainResult], out_dir: str, prefix: str, manifest: dict[str, str]) -> str:
    """Comparison table (CSV + markdown, uploaded), a table artifact, and a markdown report with plots and links."""
    client = s3()
    csv_path, md_path = compare(results, out_dir)
    for p in (csv_path, md_path):
        storage.upload_file(p, prefix.rstrip("/") + "/" + p.name, client)
    rows = [r.comparison_row() for r in results]
    create_table_artifact(rows, key="backbone-comparison", description="Backbones compared on the test split")
    hours = storage.MAX_LINK_SECONDS // 3600
    md = [md_path.read_text(), "", "## Plots", "",
          f"_Links are presigned and expire {hours} hour after this run; the `s3://` URIs stay valid._", ""]
    for r in results:
        if r.status == "failed":
            md.append(f"- **{r.backbone}** failed: `{r.error}`")
            continue
        base = prefix.rstrip("/") + f"/{r.backbone}/"
        links = {n: storage.presigned_url(base + n, client) for n in
                 ("report.html", "model.keras", "metrics.json", "model_card.md")}
        md += [f"### {r.backbone}", "",
               f"![confusion matrix]({storage.presigned_url(base + 'confusion_matrix.png', client)}) "
               f"![learning curves]({storage.presigned_url(base + 'learning_curves.png', client)})", "",
               " · ".join(f"[{n}]({u})" for n, u in links.items()), "", f"S3: `{base}`", ""]
    md += ["## Data", "", *(f"- [{n}]({storage.presigned_url(u, client)}) `{u}`" for n, u in manifest.items())]
    create_markdown_artifact("\n".join(md), key="training-report", description="scene training report")
    create_link_artifact(storage.presigned_url(prefix.rstrip("/") + "/comparison.md", client),
                         link_text="comparison.md", key="comparison",
                         description=f"expires after {hours} hour; {prefix.rstrip('/')}/comparison.md")
    get_run_logger().info("comparison:\n%s", md_path.read_text())
    return str(Path(md_path))
