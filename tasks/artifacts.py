"""Artifact tasks: upload to S3 with checksums, compare backbones, publish tables and reports to the UI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from scene.data import storage
from scene.evaluation import summary, tables
from scene.evaluation.comparison import comparison_table
from scene.train.experiment import TrainResult, compare
from tasks.common import S3_RETRIES, S3_TIMEOUT_S, s3, settings


@task(cache_policy=NO_CACHE, name="upload artifacts", task_run_name="upload {label}", timeout_seconds=S3_TIMEOUT_S,
      **S3_RETRIES)
def upload(local_dir: str, prefix: str, label: str = "") -> list[dict[str, Any]]:
    """Upload a folder (multipart for large files, sha256 recorded); return ``[{uri, sha256, bytes}]``."""
    uploaded = storage.upload_dir(local_dir, prefix, s3())
    get_run_logger().info("uploaded %d files (%.1f MB) to %s", len(uploaded),
                          sum(u["bytes"] for u in uploaded) / 1e6, prefix)
    return uploaded


@task(cache_policy=NO_CACHE, name="write result", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def write_result(result: TrainResult, prefix: str) -> str:
    """``result.json`` beside a backbone's artifacts: how a dispatching flow collects it."""
    uri = prefix.rstrip("/") + "/result.json"
    storage.write_bytes(uri, json.dumps(result.to_dict(), indent=2, default=str).encode(), s3())
    return uri


@task(cache_policy=NO_CACHE, name="read result", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def read_result(prefix: str) -> TrainResult | None:
    """The ``result.json`` a ``train-backbone`` run wrote, or None when it wrote none."""
    uri = prefix.rstrip("/") + "/result.json"
    client = s3()
    if not storage.exists(uri, client):
        return None
    return TrainResult(**json.loads(storage.read_bytes(uri, client)))


@task(cache_policy=NO_CACHE, name="compare backbones", timeout_seconds=S3_TIMEOUT_S, **S3_RETRIES)
def compare_and_publish(results: list[TrainResult], prefix: str, manifest: dict[str, str]) -> str:
    """Comparison table (CSV + markdown, uploaded), a table artifact, and a markdown report with plots and links."""
    client = s3()
    csv_path, md_path = compare(results, Path(settings().work_dir) / "runs" / prefix.rstrip("/").rsplit("/", 1)[-1])
    for p in (csv_path, md_path):
        storage.upload_file(p, prefix.rstrip("/") + "/" + p.name, client)
    rows = comparison_table([r.comparison_row() for r in results]).to_dict("records")
    create_table_artifact(tables.display_rows(rows), key="backbone-comparison",
                          description="Backbones compared (the challenger is the best on validation F1; "
                                      "test is the gate's, shown for reading)")
    hours = storage.MAX_LINK_SECONDS // 3600
    comparison_md = storage.read_bytes(str(md_path)).decode()
    md = [comparison_md, "", "## Plots", "",
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
    get_run_logger().info("comparison:\n%s", comparison_md)
    return str(Path(md_path))


SUMMARY_KEY = "run-summary"


def start_summary(title: str, facts: dict[str, Any]) -> Any:
    """Create the run's summary artifact now, in the flow (not a task): the UI lists flow-run artifacts above the
    task runs' (progress bars, tables), so a person opening the run sees it first. Returns its id."""
    return create_markdown_artifact(summary.running(_title(title), facts), key=SUMMARY_KEY,
                                    description=f"{title}: what ran, on which data, the outcome")


def finish_summary(artifact_id: Any, markdown: str) -> None:
    """Replace the summary's text with the outcome (the same artifact, so it keeps its place)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate

    if artifact_id is None:
        return
    with get_client(sync_client=True) as client:
        client.update_artifact(artifact_id, ArtifactUpdate(data=markdown))


def _title(flow: str) -> str:
    from prefect.runtime import flow_run

    return f"{flow} · {flow_run.get_name() or 'local'}"


def finish_training_summary(artifact_id: Any, flow: str, facts: dict[str, Any], results: list[TrainResult],
                            promotion: dict[str, Any] | None, prefix: str) -> None:
    """The outcome of a training run into its summary: winner, promotion decision, table, links."""
    client = s3()
    base = prefix.rstrip("/")
    links = {"comparison.md (link valid 1 hour)": presign_if_exists(base + "/comparison.md", client),
             "run artifacts": base + "/"}
    for r in results:
        if r.status != "failed":
            links[f"{r.backbone} report.html (link valid 1 hour)"] = presign_if_exists(
                f"{base}/{r.backbone}/report.html", client)
    if promotion and promotion.get("decision_uri"):
        links["promotion decision"] = promotion["decision_uri"]
    rows = comparison_table([r.comparison_row() for r in results]).to_dict("records")
    finish_summary(artifact_id, summary.training(_title(flow), facts, rows, promotion, links))


def finish_chunk_summary(artifact_id: Any, facts: dict[str, Any], title: str = "extract-chunk") -> None:
    """The outcome of one chunk run (feature extraction or prediction) into its summary."""
    finish_summary(artifact_id, summary.completed(_title(title), facts))


def finish_prediction_summary(artifact_id: Any, facts: dict[str, Any], out: str) -> None:
    """The outcome of a prediction run into its summary."""
    links = {f"{out.rsplit('/', 1)[-1]} (link valid 1 hour)": presign_if_exists(out, s3()), "predictions": out}
    finish_summary(artifact_id, summary.prediction(_title("predict"), facts, links))


def finish_retrain_summary(artifact_id: Any, outcomes: dict[str, dict[str, Any]]) -> None:
    """The outcome of a retraining (one entry per dataset) into its summary."""
    parts = [f"# {_title('retrain')}", "", "**Status: ✓ completed**", ""]
    for data, out in outcomes.items():
        parts += [f"## {data}", ""]
        if out.get("skipped"):
            why = out.get("reason") or f"champion {out.get('champion')}"  # duplicate/superseded runs say why
            parts += [f"Skipped: {out['skipped']} ({why}).", ""]
            continue
        rows = comparison_table([TrainResult(**r).comparison_row() for r in out.get("results", [])])
        parts += [summary.promotion_line(out), "", tables.markdown(tables.display_rows(rows.to_dict("records"))),
                  f"Artifacts: `{out.get('prefix', '')}`", ""]
    finish_summary(artifact_id, "\n".join(parts) + "\n")


def presign_if_exists(uri: str, client: Any) -> str:
    """A presigned link to ``uri`` when the object exists, else ""."""
    return storage.presigned_url(uri, client) if storage.exists(uri, client) else ""


def summary_on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (``on_failure``/``on_crashed``/``on_cancellation``): mark the run's summary with how it ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactUpdate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]), key=ArtifactFilterKey(any_=[SUMMARY_KEY])))
        message = f"{state.name}: {tables.shorten(state.message or state.name, 400)}"
        for art in found:
            client.update_artifact(art.id, ArtifactUpdate(data=summary.failed(f"{flow.name} {flow_run.name}",
                                                                               message)))
