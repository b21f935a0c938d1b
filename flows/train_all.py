"""Flow: validate the data, train every backbone in parallel (one ``train-backbone`` run each), compare, promote."""

from __future__ import annotations

import time
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling

from flows.processes import train_in_processes
from scene.data.dataset import Dataset
from scene.metadata import CLASS_NAMES, DEMO_DATA_URI
from scene.registry import ModelVersion, Pointer, select_challenger
from scene.train.experiment import TrainResult
from scene.train.params import TrainParams
from tasks import artifacts
from tasks import audit as audit_tasks
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import FLOW_TIMEOUT_S, run_prefix

DOCKER_DEPLOYMENT = "train-backbone/docker"  # dispatch="docker": a container per backbone (stack up --pool docker)


def _dispatch(backbones: list[str], run_args: dict[str, Any], deployment: str, *, start_timeout_s: float,
              dispatch_timeout_s: float, poll: float = 3.0) -> list[TrainResult]:
    """One ``train-backbone`` flow run per backbone on the deployment's work pool; wait (bounded); collect."""
    log = get_run_logger()
    params = {**run_args, "params": run_args["params"].model_dump()}
    runs = {b: run_deployment(deployment, parameters={"backbone": b, **params}, timeout=0,
                              flow_run_name=f"{b}", tags=["scene", b]).id for b in backbones}
    log.info("created %d %s flow runs: %s", len(runs), deployment, ", ".join(f"{b}={r}" for b, r in runs.items()))
    outcome = _await_runs(runs, start_timeout_s, dispatch_timeout_s, poll)
    results = []
    for b in backbones:
        state = outcome[b]
        res = artifacts.read_result(f"{params['run_prefix_uri'].rstrip('/')}/{b}/") if state.is_completed() else None
        if res is None:
            res = TrainResult(b, "failed", f"flow run {runs[b]} {state.name}: {state.message or state.name}",
                              strategy=params["params"]["strategy"],
                              weights=params["params"]["weights"])
        results.append(res)
    return results


def _await_runs(runs: dict[str, UUID], start_timeout_s: float, dispatch_timeout_s: float,
                poll: float) -> dict[str, State]:
    """The final state of every run; a run still Scheduled/Pending after ``start_timeout_s`` is cancelled.

    The start clock restarts whenever a sibling run finishes (a run may wait for the slot it frees); a run not
    final after ``dispatch_timeout_s`` is cancelled too. Each given-up run's state carries the reason.
    """
    log = get_run_logger()
    began = since = time.monotonic()
    out: dict[str, State] = {}
    with get_client(sync_client=True) as client:
        while len(out) < len(runs):
            now = time.monotonic()
            for b, run_id in runs.items():
                state = None if b in out else client.read_flow_run(run_id).state
                if state is None:
                    continue
                if state.is_final():
                    out[b], since = state, time.monotonic()
                    log.info("%s finished: %s", b, state.name)
                elif state.type in (StateType.SCHEDULED, StateType.PENDING) and now - since > start_timeout_s:
                    out[b] = _give_up(client, run_id, state, f"never started: still {state.name} after "
                                      f"{now - since:.0f} s (start_timeout_s={start_timeout_s:g}); is a worker "
                                      "polling the deployment's work pool?")
                elif now - began > dispatch_timeout_s:
                    out[b] = _give_up(client, run_id, state, f"not finished after {now - began:.0f} s "
                                      f"(dispatch_timeout_s={dispatch_timeout_s:g}), was {state.name}")
            if len(out) < len(runs):
                time.sleep(poll)
    return out


def _give_up(client: Any, run_id: UUID, state: State, reason: str) -> State:
    """Cancel a dispatched run the orchestrator stops waiting for; the returned state names why."""
    get_run_logger().error("flow run %s %s; cancelling it", run_id, reason)
    final = Cancelled(message=reason)
    try:  # a run no worker holds is cancelled at once; a held one is asked to stop (its worker kills it)
        client.set_flow_run_state(run_id, final if state.type == StateType.SCHEDULED else Cancelling(message=reason),
                                  force=True)
    except Exception as err:  # the table still reports the backbone as failed
        get_run_logger().warning("could not cancel flow run %s: %s", run_id, err)
    return final


def train_and_compare(ds: Dataset, backbones: list[str], params: TrainParams, manifest: dict[str, str], prefix: str,
                      *, on_missing_weights: str, dispatch: str = "local", deployment: str = "train-backbone/gpu",
                      slots: int = 2, start_timeout_s: float = 1800.0,
                      dispatch_timeout_s: float = 6 * 3600.0) -> tuple[list[TrainResult], str]:
    """Every backbone as a ``train-backbone`` run (in parallel), then the comparison table; returns both."""
    run_args = {"params": params, "classes": list(ds.class_names or CLASS_NAMES),
                "on_missing_weights": on_missing_weights, "run_prefix_uri": prefix}
    if dispatch == "local":
        results = train_in_processes(ds, backbones, run_args, slots)  # a process per backbone
    else:
        target = DOCKER_DEPLOYMENT if dispatch == "docker" else deployment  # docker: the scene image's pool
        results = _dispatch(backbones, {**run_args, "manifest_uri": manifest["manifest.csv"]}, target,
                            start_timeout_s=start_timeout_s, dispatch_timeout_s=dispatch_timeout_s)
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
) -> dict:
    """Validate the data, train every backbone in parallel, compare them and upload every artifact."""
    params = params.resolved()  # a named preset fills every training parameter not set
    backbones = params.names()
    facts = {"data": data, "backbones": ", ".join(backbones), **params.facts(), "dispatch": dispatch}
    summary_id = artifacts.start_summary("train-all", facts)  # first: the UI lists it above the task artifacts
    log = get_run_logger()
    params.check()
    for name, value in (("slots", slots), ("start_timeout_s", start_timeout_s),
                        ("dispatch_timeout_s", dispatch_timeout_s)):
        if not value > 0:
            raise ValueError(f"{name}={value} is invalid; pass a positive number (slots: concurrent trainings, "
                             "timeouts: seconds to wait for dispatched runs)")
    pointer = registry_tasks.read_champion(data) if promote else None  # this dataset's champion, read once
    ds = data_tasks.build_manifest(data, test, classes)
    report = data_tasks.validate(ds)
    prefix = run_prefix()
    audit = audit_tasks.audit_data(ds, params.config(backbones[0]), prefix, labels=audit_labels)
    manifest = data_tasks.publish_manifest(ds, report, prefix)
    log.info("training %s on %d images (%s dispatch); artifacts under %s", ", ".join(backbones), len(ds.manifest),
             dispatch, prefix)
    results, comparison = train_and_compare(ds, backbones, params, manifest, prefix,
                                            on_missing_weights=on_missing_weights, dispatch=dispatch,
                                            deployment=deployment, slots=slots, start_timeout_s=start_timeout_s,
                                            dispatch_timeout_s=dispatch_timeout_s)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        log.error("%s failed: %s", r.backbone, r.error)
    require_a_model(results)
    gated = promote_best(ds, results, pointer, alpha) if promote else {"promoted": False}
    artifacts.finish_training_summary(summary_id, "train-all", {**facts, "images": len(ds.manifest),
                                      "data fingerprint": ds.fingerprint}, results, gated if promote else None, prefix)
    return {"prefix": prefix, "comparison": comparison, "data_fingerprint": ds.fingerprint, "promotion": gated,
            "audit": audit, "results": [r.to_dict() for r in results], "failed": [r.backbone for r in failed]}
