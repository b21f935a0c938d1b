"""Flow: validate the data, train every backbone in parallel (one ``train-backbone`` run each), compare, promote."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as this_run

from flows import dispatching
from flows.processes import train_in_processes
from scene.data import scope
from scene.data.dataset import Dataset
from scene.metadata import DEMO_DATA_URI
from scene.ops import gpus
from scene.registry import ModelVersion, Pointer, select_challenger
from scene.train.experiment import TrainResult
from scene.train.params import TrainParams
from tasks import artifacts
from tasks import audit as audit_tasks
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import FLOW_TIMEOUT_S, keeps_termination, run_prefix, settings

DOCKER_DEPLOYMENT = "train-backbone/docker"  # dispatch="docker": a container per backbone (stack up --pool docker)


def _dispatch(backbones: list[str], run_args: dict[str, Any], deployment: str, *, start_timeout_s: float,
              dispatch_timeout_s: float, devices: list[str] | None = None, poll: float = 3.0) -> list[TrainResult]:
    """One ``train-backbone`` flow run per backbone on the deployment's work pool; wait (bounded); collect.

    ``devices``: the accelerators of the pool's host (e.g. ``["0", "1"]``): at most one run per device at a time,
    each pinned to its device through job variables (:func:`scene.ops.gpus.device_job_variables`); the other
    backbones are dispatched as devices free up. Without ``devices`` every run is created at once and the pool's
    concurrency limit (or Kubernetes' device plugin) decides what runs.
    """
    log = get_run_logger()
    params = {**run_args, "params": run_args["params"].model_dump()}
    pool_type = _pool_of(deployment).type if devices else ""
    parent = this_run.get_id()

    def submit(backbone: str, device: str | None) -> UUID:
        pinned = gpus.device_job_variables(pool_type, [device]) if device is not None else None
        run = run_deployment(deployment, parameters={"backbone": backbone, **params}, timeout=0,
                             flow_run_name=backbone, tags=["scene", backbone], job_variables=pinned,
                             idempotency_key=f"{parent}:{backbone}" if parent else None)
        log.info("created %s flow run %s for %s%s", deployment, run.id, backbone,
                 f" on device {device}" if device is not None else "")
        return run.id

    outcome = dispatching.await_runs(backbones, submit, devices, start_timeout_s, dispatch_timeout_s, poll)
    results = []
    for b in backbones:
        run_id, state = outcome[b]
        res = artifacts.read_result(f"{params['run_prefix_uri'].rstrip('/')}/{b}/") if state.is_completed() else None
        if res is None:
            res = TrainResult(b, "failed", f"flow run {run_id} {state.name}: {state.message or state.name}",
                              strategy=params["params"]["strategy"],
                              weights=params["params"]["weights"])
        results.append(res)
    return results


def _pool_of(deployment: str) -> Any:
    """The work pool a deployment's runs go to (its name and type)."""
    with get_client(sync_client=True) as client:
        return client.read_work_pool(client.read_deployment_by_name(deployment).work_pool_name)


def extract_first(ds: Dataset, report: Any, prefix: str, backbones: list[str], params: TrainParams, chunks: int,
                  deployment: str, *, local: bool, on_missing_weights: str, start_timeout_s: float,
                  timeout_s: float) -> dict[str, str] | None:
    """With ``chunks`` > 1 and the cached strategy: publish the manifest, then extract each backbone's features by
    ``chunks`` runs of ``deployment`` (one chunk of the images each), backbone after backbone; this flow holds no slot
    of their pool while it waits. Local children read this process's feature cache, so the chunks write there;
    dispatched ones read their pool's, as the chunk runs do on it. Returns the published manifest (None: nothing
    done). Runs before the data audit, which reads the first backbone's features."""
    if chunks <= 1 or params.strategy != "cached":
        return None
    manifest = data_tasks.publish_manifest(ds, report, prefix)
    cache = settings().feature_cache if local else None
    for backbone in backbones:
        dispatching.extract_in_chunks(backbone, params, manifest["manifest.csv"], chunks, deployment,
                                      feature_cache=cache, on_missing_weights=on_missing_weights,
                                      start_timeout_s=start_timeout_s, timeout_s=timeout_s)
    return manifest


def train_and_compare(ds: Dataset, backbones: list[str], params: TrainParams, manifest: dict[str, str], prefix: str,
                      *, on_missing_weights: str, dispatch: str = "local", deployment: str = "train-backbone/gpu",
                      devices: list[str] | None = None, slots: int = 2, start_timeout_s: float = 1800.0,
                      dispatch_timeout_s: float = 6 * 3600.0) -> tuple[list[TrainResult], str]:
    """Every backbone as a ``train-backbone`` run (in parallel), then the comparison table; returns both.

    Every child, local or dispatched, gets the published manifest by URI (its ``dataset.json`` names the data
    root, test root and classes), so each version registers under the data root and is gated against its champion.
    """
    run_args = {"params": params, "on_missing_weights": on_missing_weights, "run_prefix_uri": prefix,
                "manifest_uri": manifest["manifest.csv"]}
    if dispatch == "local":
        results = train_in_processes(backbones, run_args, slots)  # a process per backbone
    else:
        target = DOCKER_DEPLOYMENT if dispatch == "docker" else deployment  # docker: the scene image's pool
        results = _dispatch(backbones, run_args, target, start_timeout_s=start_timeout_s,
                            dispatch_timeout_s=dispatch_timeout_s, devices=devices)
    return results, artifacts.compare_and_publish(results, prefix, manifest)


def require_a_model(results: list[TrainResult]) -> None:
    """Fail the run when every backbone failed (the comparison table, already published, says why each did)."""
    if results and all(r.status == "failed" for r in results):
        raise RuntimeError("every backbone failed: " + "; ".join(f"{r.backbone}: {r.error}" for r in results))


def promote_best(ds: Dataset, results: list[TrainResult], pointer: Any, alpha: float) -> dict:
    """Gate the registered model best on *validation* against its dataset's champion.

    ``pointer`` is the champion pointer the flow read when it started; it is used only when it is the pointer
    of the challenger's dataset, else that dataset's pointer is read now. Test metrics play no part in the
    choice: the test split is used once, by the gate.
    """
    log = get_run_logger()
    best = select_challenger([r for r in results if r.version])
    if best is None:
        log.warning("no usable challenger (all failed or collapsed): the champion stays")
        return {"promoted": False, "reason": "no usable challenger"}
    challenger = ModelVersion.from_dict(best.version)
    log.info("challenger %s: best validation F1 (weighted) %s among %d usable backbones", challenger.version,
             (best.metrics.get("val") or {}).get("f1_weighted"), sum(r.status == "ok" for r in results))
    if not isinstance(pointer, Pointer) or pointer.dataset != challenger.dataset:
        pointer = registry_tasks.read_champion(challenger.dataset)
    champion_predictions = registry_tasks.score_champion(pointer, ds)
    challenger_predictions = registry_tasks.test_predictions_of(challenger)
    decision = registry_tasks.gate(challenger, challenger_predictions, champion_predictions, pointer, alpha,
                                   list(ds.class_names))
    return {"promoted": decision.promote, "decision": decision.to_dict(), "challenger": challenger.version,
            "dataset": challenger.dataset, "decision_uri": challenger.uri + "decision.json"}


@flow(name="train-all", log_prints=True, timeout_seconds=FLOW_TIMEOUT_S, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
@keeps_termination
def train_all(
    data: str = DEMO_DATA_URI,
    params: TrainParams = TrainParams(),
    test: str | None = None,
    classes: list[str] | None = None,
    on_missing_weights: Literal["random-init", "fail"] = "random-init",
    dispatch: Literal["local", "deployments", "docker"] = "local",
    deployment: str = "train-backbone/gpu",
    slots: int = 2,
    promote: bool = True,
    alpha: float = 0.05,
    audit_labels: bool = False,
    start_timeout_s: float = 1800.0,
    dispatch_timeout_s: float = 6 * 3600.0,
    devices: list[str] | None = None,
    extract_chunks: int = 1,
    extract_deployment: str = "extract-chunk/gpu",
    read_deployment: str = "read-chunk/gpu",
) -> dict:
    """Validate the data, train every backbone in parallel, compare them and upload every artifact.

    ``extract_chunks`` > 1: the new images are read, hashed and checked by that many ``read_deployment`` flow runs
    (the manifest step), then each backbone's features are extracted by that many ``extract_deployment`` flow runs
    (chunks of the images by sha256 prefix) into the feature cache; then its training run trains the head."""
    scope.require_data_uris(settings(), data=data, test=test)  # only inside the data bucket and prefix
    params = params.resolved()  # a named preset fills every training parameter not set
    backbones = params.names()
    facts = {"data": data, "backbones": ", ".join(backbones), **params.facts(), "dispatch": dispatch}
    summary_id = artifacts.start_summary("train-all", facts)  # first: the UI lists it above the task artifacts
    log = get_run_logger()
    params.check()
    if devices is not None and (not devices or len(set(devices)) != len(devices) or not all(
            isinstance(d, str) and d.strip() for d in devices)):
        raise ValueError(f"devices={devices!r} is invalid; pass distinct device ids as strings, e.g. [\"0\", \"1\"] "
                         "(one dispatched run per device at a time), or leave it unset")
    for name, value in (("slots", slots), ("start_timeout_s", start_timeout_s),
                        ("dispatch_timeout_s", dispatch_timeout_s)):
        if not value > 0:
            raise ValueError(f"{name}={value} is invalid; pass a positive number (slots: concurrent trainings, "
                             "timeouts: seconds to wait for dispatched runs)")
    dispatching.require_chunks(extract_chunks, "extract_chunks")  # before any work
    pointer = registry_tasks.read_champion(data)  # this dataset's champion, read once
    previous = registry_tasks.previous_manifest(pointer.champion)  # its splits stay sticky; a moved image stops the run
    ds = data_tasks.build_manifest(data, test, classes, previous=previous, reader=dispatching.chunked_reader(
        data, test, extract_chunks, read_deployment, start_timeout_s=start_timeout_s, timeout_s=dispatch_timeout_s))
    report = data_tasks.validate(ds, previous)
    prefix = run_prefix()
    manifest = extract_first(ds, report, prefix, backbones, params, extract_chunks, extract_deployment,
                             local=dispatch == "local", on_missing_weights=on_missing_weights,
                             start_timeout_s=start_timeout_s, timeout_s=dispatch_timeout_s)
    audit = audit_tasks.audit_data(ds, params.config(backbones[0]), prefix, labels=audit_labels)
    manifest = manifest or data_tasks.publish_manifest(ds, report, prefix)
    log.info("training %s on %d images (%s dispatch); artifacts under %s", ", ".join(backbones), len(ds.manifest),
             dispatch, prefix)
    results, comparison = train_and_compare(ds, backbones, params, manifest, prefix,
                                            on_missing_weights=on_missing_weights, dispatch=dispatch,
                                            deployment=deployment, devices=devices, slots=slots,
                                            start_timeout_s=start_timeout_s, dispatch_timeout_s=dispatch_timeout_s)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        log.error("%s failed: %s", r.backbone, r.error)
    require_a_model(results)
    gated = promote_best(ds, results, pointer, alpha) if promote else {"promoted": False}
    artifacts.finish_training_summary(summary_id, "train-all", {**facts, "images": len(ds.manifest),
                                      "data fingerprint": ds.fingerprint}, results, gated if promote else None, prefix)
    return {"prefix": prefix, "comparison": comparison, "data_fingerprint": ds.fingerprint, "promotion": gated,
            "audit": audit, "results": [r.to_dict() for r in results], "failed": [r.backbone for r in failed]}
