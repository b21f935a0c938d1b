"""Flow: validate the data, train every backbone in parallel (one ``train-backbone`` run each), compare, promote."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as this_run
from prefect.states import Cancelled, Cancelling

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

    outcome = _await_runs(backbones, submit, devices, start_timeout_s, dispatch_timeout_s, poll)
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


@dataclass
class _Watched:
    """One dispatched run as the dispatcher follows it: its device and when its state last changed."""

    run_id: UUID
    device: str | None
    since: float  # monotonic time of the last state change seen (the run's own start clock)
    seen: tuple[Any, ...] = ()


def _await_runs(backbones: list[str], submit: Callable[[str, str | None], UUID], devices: list[str] | None,
                start_timeout_s: float, dispatch_timeout_s: float, poll: float) -> dict[str, tuple[UUID, State]]:
    """Dispatch (at most one run per device when ``devices`` are given) and follow every run to a final state.

    Each run has its own start clock, restarted on each of its state changes (so a run that waits in line, or one a
    preempted pod sends back to Scheduled, is followed, not cancelled). A run still Scheduled/Pending after
    ``start_timeout_s`` since its last change is cancelled only when no worker polls its work pool (the pool is not
    READY): waiting for a busy pool is not a failure. A run not final after ``dispatch_timeout_s`` is cancelled too.
    Each given-up run's state carries the reason.
    """
    log = get_run_logger()
    began = time.monotonic()
    waiting, free = list(backbones), list(devices) if devices else None
    active: dict[str, _Watched] = {}
    out: dict[str, tuple[UUID, State]] = {}
    with get_client(sync_client=True) as client:
        while waiting or active:
            while waiting and (free is None or free):
                device = free.pop(0) if free else None
                b = waiting.pop(0)
                active[b] = _Watched(submit(b, device), device, time.monotonic())
            pools: dict[str, Any] = {}
            for b, w in list(active.items()):
                run = client.read_flow_run(w.run_id)
                state, now = run.state, time.monotonic()
                if state is None:
                    continue
                if (state.type, state.name, state.timestamp) != w.seen:
                    if w.seen:
                        log.info("%s: %s", b, state.name)
                    w.seen, w.since = (state.type, state.name, state.timestamp), now
                if state.is_final():
                    final = state
                elif state.type in (StateType.SCHEDULED, StateType.PENDING) and now - w.since > start_timeout_s:
                    name = run.work_pool_name or ""
                    if name not in pools:
                        pools[name] = _pool_status(client, name)
                    if pools[name] == "READY":
                        continue  # a worker polls the pool: the run waits for a slot (or its infrastructure)
                    final = _give_up(client, w.run_id, state, f"never started: still {state.name} after "
                                     f"{now - w.since:.0f} s (start_timeout_s={start_timeout_s:g}); no worker polls "
                                     f"its work pool {name!r} (status {pools[name]}): start one with `prefect "
                                     f"worker start --pool {name}`")
                elif now - began > dispatch_timeout_s:
                    final = _give_up(client, w.run_id, state, f"not finished after {now - began:.0f} s "
                                     f"(dispatch_timeout_s={dispatch_timeout_s:g}), was {state.name}")
                else:
                    continue
                log.info("%s finished: %s", b, final.name)
                out[b] = (w.run_id, final)
                del active[b]
                if free is not None and w.device is not None:
                    free.append(w.device)
            if waiting or active:
                time.sleep(poll)
    return out


def _pool_status(client: Any, name: str) -> str:
    """A work pool's status (READY when a worker polls it), or why it cannot be read."""
    try:
        pool = client.read_work_pool(name)
    except Exception as err:  # a deleted pool: nobody will start the run
        return f"unreadable: {err}"
    return "PAUSED" if pool.is_paused else str(getattr(pool.status, "value", pool.status))


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
) -> dict:
    """Validate the data, train every backbone in parallel, compare them and upload every artifact."""
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
    pointer = registry_tasks.read_champion(data)  # this dataset's champion, read once
    previous = registry_tasks.previous_manifest(pointer.champion)  # its splits stay sticky; a moved image stops the run
    ds = data_tasks.build_manifest(data, test, classes, previous=previous)
    report = data_tasks.validate(ds, previous)
    prefix = run_prefix()
    audit = audit_tasks.audit_data(ds, params.config(backbones[0]), prefix, labels=audit_labels)
    manifest = data_tasks.publish_manifest(ds, report, prefix)
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
