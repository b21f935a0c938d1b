"""Flow: validate the data, train every backbone in parallel, compare, report, upload."""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling

from flows.steps import DEFAULT_BACKBONES, check_params, preset_values, promote_best, run_prefix
from flows.train_backbone import train_backbone
from scene.experiment import TrainResult
from scene.metadata import CLASS_NAMES
from scene.train import TrainConfig
from tasks import artifacts
from tasks import audit as audit_tasks
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import settings

DOCKER_DEPLOYMENT = "train-backbone/docker"  # dispatch="docker": a container per backbone (stack up --pool docker)


def _local(backbones: list[str], params: dict[str, Any], slots: int) -> list[TrainResult]:
    """Each backbone as a ``train-backbone`` subflow; at most ``slots`` at once, failures isolated."""
    log = get_run_logger()

    def one(b: str) -> TrainResult:
        try:
            return TrainResult(**train_backbone(backbone=b, **params))
        except Exception as err:  # a failed backbone never stops the others
            log.error("%s failed: %s: %s", b, type(err).__name__, err)
            return TrainResult(b, "failed", f"{type(err).__name__}: {err}", strategy=params["strategy"],
                               weights=params["weights"])

    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="backbone") as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, b) for b in backbones]
        return [f.result() for f in futures]


def _dispatch(backbones: list[str], params: dict[str, Any], deployment: str, *, start_timeout_s: float,
              dispatch_timeout_s: float, poll: float = 3.0) -> list[TrainResult]:
    """One ``train-backbone`` flow run per backbone on the deployment's work pool; wait (bounded); collect."""
    log = get_run_logger()
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
                              strategy=params["strategy"], weights=params["weights"])
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


@flow(name="train-all", log_prints=True, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
def train_all(
    data: str = "s3://scene-data/datasets/demo/",
    test: str | None = None,
    backbones: list[str] = DEFAULT_BACKBONES,
    classes: list[str] | None = None,
    weights: str = "imagenet",
    strategy: Literal["cached", "online"] = "cached",
    views: int = 2,
    epochs: int = 100,
    image_size: int = 150,
    finetune_layers: int = 0,
    mixed_precision: bool = False,
    mirror: bool = False,
    preset: str | None = None,
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
    """Validate the data, train every backbone in parallel, compare them and upload every artifact.

    ``preset`` (e.g. ``best-cpu``): a named recipe that fills every parameter left at its default.
    """
    if preset:  # a named recipe fills every parameter left at its default
        v = preset_values(preset, backbones=backbones, views=views, epochs=epochs, image_size=image_size, mirror=mirror)
        backbones, views, epochs, image_size, mirror = (v[k] for k in ("backbones", "views", "epochs", "image_size",
                                                                       "mirror"))
    facts = {"data": data, "backbones": ", ".join(backbones), "weights": weights, "strategy": strategy,
             "epochs": epochs, "image size": image_size, "mirror": mirror, "preset": preset or "none",
             "dispatch": dispatch}
    summary_id = artifacts.start_summary("train-all", facts)  # first: the UI lists it above the task artifacts
    log = get_run_logger()
    cfg = {"weights": weights, "strategy": strategy, "views": views, "epochs": epochs, "image_size": image_size,
           "finetune_layers": finetune_layers, "mixed_precision": mixed_precision, "mirror": mirror}
    check_params(backbones, slots, **cfg)
    for name, value in (("start_timeout_s", start_timeout_s), ("dispatch_timeout_s", dispatch_timeout_s)):
        if not value > 0:
            raise ValueError(f"{name}={value} is invalid; pass the seconds to wait for dispatched runs (> 0)")
    pointer = registry_tasks.read_champion(data) if promote else None  # this dataset's champion, read once
    ds = data_tasks.build_manifest(data, test, classes)
    report = data_tasks.validate(ds)
    prefix = run_prefix()
    audit = audit_tasks.audit_data(ds, TrainConfig(backbone=backbones[0], **cfg), prefix, labels=audit_labels)
    manifest = data_tasks.publish_manifest(ds, report, prefix)
    log.info("training %s on %d images (%s dispatch); artifacts under %s", ", ".join(backbones), len(ds.manifest),
             dispatch, prefix)
    params = {**cfg, "manifest_uri": manifest["manifest.csv"], "classes": list(ds.class_names or CLASS_NAMES),
              "on_missing_weights": on_missing_weights, "run_prefix_uri": prefix}
    if dispatch == "local":
        results = _local(backbones, params, slots)
    else:
        target = DOCKER_DEPLOYMENT if dispatch == "docker" else deployment  # docker: the scene image's pool
        results = _dispatch(backbones, params, target, start_timeout_s=start_timeout_s,
                            dispatch_timeout_s=dispatch_timeout_s)
    out_dir = Path(settings().work_dir) / "runs" / prefix.rstrip("/").rsplit("/", 1)[-1]
    comparison = artifacts.compare_and_publish(results, str(out_dir), prefix, manifest)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        log.error("%s failed: %s", r.backbone, r.error)
    if len(failed) == len(results):
        raise RuntimeError("every backbone failed: " + "; ".join(f"{r.backbone}: {r.error}" for r in failed))
    gated = promote_best(ds, results, pointer, prefix, alpha) if promote else {"promoted": False}
    artifacts.finish_training_summary(summary_id, "train-all", {**facts, "images": len(ds.manifest),
                                      "data fingerprint": ds.fingerprint}, results, gated if promote else None, prefix)
    return {"prefix": prefix, "comparison": comparison, "data_fingerprint": ds.fingerprint, "promotion": gated,
            "audit": audit,
            "results": [r.to_dict() for r in results], "failed": [r.backbone for r in failed]}
