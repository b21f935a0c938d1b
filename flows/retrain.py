"""Flow: retrain a dataset (or every champion's dataset), register the models, promote a significantly better one.

Each dataset has its own champion in the registry. An event (``scene.data.arrived``) names the dataset root that
changed: its challengers are gated only against that dataset's champion. The weekly schedule passes no data: it
retrains the dataset of every champion (with ``only_if_changed``, only those whose data changed since).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger

from flows import dispatching, retrain_runs
from flows.train_all import extract_first, promote_best, require_a_model, train_and_compare
from scene.data import scope
from scene.metadata import DEFAULT_BACKBONES
from scene.train.params import TrainParams
from tasks import artifacts
from tasks import audit as audit_tasks
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import FLOW_TIMEOUT_S, keeps_termination, run_prefix, settings


def _retrain_dataset(data: str, test: str | None, params: TrainParams, *, prefix: str, alpha: float,
                     only_if_changed: bool, on_missing_weights: str, slots: int = 2,
                     audit_labels: bool = False, dispatch: dict[str, Any] | None = None,
                     extract: dict[str, Any] | None = None) -> dict:
    """What changed in ``data`` since its champion; then the same per-backbone runs as train-all, in parallel, and
    the best gated against that dataset's champion (named in the result). ``extract``: ``chunks`` and
    ``deployment`` of sharded extraction and ``read_deployment`` of the manifest step's chunks, as train-all's
    ``extract_chunks``/``extract_deployment``/``read_deployment``."""
    log = get_run_logger()
    pointer = registry_tasks.read_champion(data)  # this dataset's champion only
    champ = pointer.champion
    params = registry_tasks.champion_recipe(champ, params)  # its recipe; fields given explicitly win
    test = test if test is not None else (champ or {}).get("test") or None  # and its test root
    backbones = params.names([champ["backbone"]] if champ else DEFAULT_BACKBONES)
    params.check(backbones)
    previous = registry_tasks.previous_manifest(champ)
    dispatch = dispatch or {}
    extract = extract or {}
    waits = {"start_timeout_s": dispatch.get("start_timeout_s", 1800.0),
             "timeout_s": dispatch.get("dispatch_timeout_s", 6 * 3600.0)}
    ds = data_tasks.build_manifest(data, test, previous=previous, reader=dispatching.chunked_reader(
        data, test, extract.get("chunks", 1), extract.get("read_deployment", "read-chunk/gpu"), **waits))
    if only_if_changed and champ and registry_tasks.trained_on(champ) == ds.fingerprint:
        log.info("%s unchanged since its champion %s was trained (fingerprint %s): nothing to do", data,
                 champ["version"], ds.fingerprint)
        return {"data": data, "skipped": "data unchanged", "champion": champ["version"],
                "data_fingerprint": ds.fingerprint, "objects_read": ds.objects_read}
    report = data_tasks.validate(ds, previous)
    if report.new_images is not None:
        log.info("%d images of %s are new since its champion's data", report.new_images, data)
    published = extract_first(ds, report, prefix, backbones, params, extract.get("chunks", 1),
                              extract.get("deployment", "extract-chunk/gpu"),
                              local=dispatch.get("dispatch", "local") == "local", on_missing_weights=on_missing_weights,
                              **waits)
    audit = audit_tasks.audit_data(ds, params.config(backbones[0]), prefix, labels=audit_labels)
    new_rows = ds.manifest[~ds.manifest["sha256"].isin(previous["sha256"])] if previous is not None else ds.manifest[:0]
    drift = audit_tasks.drift_check(None, champ, new_rows, f"{len(new_rows)} new images of {data}")
    manifest = published or data_tasks.publish_manifest(ds, report, prefix)
    results, _ = train_and_compare(ds, backbones, params, manifest, prefix, on_missing_weights=on_missing_weights,
                                   slots=slots, **dispatch)
    require_a_model(results)  # a retrain whose every backbone failed is a failed run, not "no challenger"
    gated = promote_best(ds, results, pointer, alpha)
    return {**gated, "data": data, "champion": champ["version"] if champ else None, "audit": audit, "drift": drift,
            "data_fingerprint": ds.fingerprint, "objects_read": ds.objects_read, "prefix": prefix,
            "results": [r.to_dict() for r in results]}


@flow(name="retrain-dataset", flow_run_name="retrain {data}", log_prints=True, timeout_seconds=FLOW_TIMEOUT_S)
@keeps_termination
def retrain_dataset(data: str, test: str | None, params: TrainParams, alpha: float, only_if_changed: bool,
                    on_missing_weights: str, slots: int = 2, audit_labels: bool = False,
                    dispatch: dict[str, Any] | None = None, extract: dict[str, Any] | None = None) -> dict:
    """One dataset of a scheduled retraining, as a subflow: its own run id, artifact prefix and work folders."""
    return _retrain_dataset(data, test, params, prefix=run_prefix(), alpha=alpha, only_if_changed=only_if_changed,
                            on_missing_weights=on_missing_weights, slots=slots, audit_labels=audit_labels,
                            dispatch=dispatch, extract=extract)


def _one_dataset(data: str, test: str | None, params: TrainParams, change_id: str | None, opts: dict) -> dict:
    """Retrain one dataset in its slot, unless this run ends early (duplicate or superseded, checked at start, while
    waiting for the slot and once it is held)."""
    return retrain_runs.in_slot(data, change_id,
                                lambda: _retrain_dataset(data, test, params, prefix=run_prefix(), **opts))


@flow(name="retrain", log_prints=True, timeout_seconds=2 * FLOW_TIMEOUT_S, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
@keeps_termination
def retrain(
    data: str | None = None,
    test: str | None = None,
    params: TrainParams = TrainParams(),
    alpha: float = 0.05,
    only_if_changed: bool = False,
    on_missing_weights: Literal["random-init", "fail"] = "random-init",
    new_objects: int = 0,
    slots: int = 2,
    audit_labels: bool = False,
    dispatch: Literal["local", "deployments", "docker"] = "local",
    deployment: str = "train-backbone/gpu",
    devices: list[str] | None = None,
    start_timeout_s: float = 1800.0,
    dispatch_timeout_s: float = 6 * 3600.0,
    change_id: str | None = None,
    extract_chunks: int = 1,
    extract_deployment: str = "extract-chunk/gpu",
    read_deployment: str = "read-chunk/gpu",
) -> dict:
    """Retrain ``data`` against its own champion; without ``data``, retrain every champion's dataset.

    ``params.backbones`` unset: each dataset's champion's backbone (a dataset without a champion: the defaults).
    ``dispatch``/``deployment``/``devices``/timeouts: where the backbones train, as for train-all (local processes,
    or one flow run per backbone on the deployment's work pool, e.g. a GPU pool).
    ``change_id``: the announced change (the event trigger passes it): a run whose change an earlier run already
    handles ends as a duplicate, one with a newer run waiting for the same data ends as superseded (both
    Completed, see :mod:`scene.ops.coalesce`); the others train one at a time per dataset (its slot).
    ``extract_chunks`` > 1: the new images are read by that many ``read_deployment`` runs and each backbone's
    features extracted by that many ``extract_deployment`` runs (as in train-all).
    """
    for name, uri in (("data", data), ("test", test)):  # only inside the data bucket and prefix
        if uri is not None:
            scope.require_data_uri(uri, settings(), name=name)
    params = params.resolved()  # a named preset fills every training parameter not set
    summary_id = artifacts.start_summary("retrain", {"data": data or "every champion's dataset", "backbones": ", ".join(
        params.backbones or ["the champion's"]), **params.facts()})  # first: above the task artifacts
    log = get_run_logger()
    params.check()
    dispatching.require_chunks(extract_chunks, "extract_chunks")  # before any work
    opts = {"alpha": alpha, "only_if_changed": only_if_changed, "on_missing_weights": on_missing_weights,
            "slots": slots, "audit_labels": audit_labels,
            "dispatch": {"dispatch": dispatch, "deployment": deployment, "devices": devices,
                         "start_timeout_s": start_timeout_s, "dispatch_timeout_s": dispatch_timeout_s},
            "extract": {"chunks": extract_chunks, "deployment": extract_deployment,
                        "read_deployment": read_deployment}}
    if data is not None:
        if new_objects:
            log.info("retraining after %d new objects under %s", new_objects, data)
        result = _one_dataset(data, test, params, change_id, opts)
        artifacts.finish_retrain_summary(summary_id, {data: result})
        return result
    if test is not None:
        raise ValueError(f"test={test!r} without data: pass the data root it belongs to as data=, or neither "
                         "(then each champion's dataset is retrained with its own test split)")
    champs = registry_tasks.read_champions()
    if not champs:
        log.warning("no dataset has a champion yet, so there is nothing to retrain: run train-all, or pass data=")
        return {"skipped": "no champion", "datasets": {}}
    log.info("retraining the datasets of %d champions: %s", len(champs), ", ".join(sorted(champs)))
    started = retrain_runs.fan_out(champs)  # from the deployment: one retrain run per dataset, then return
    if started is not None:
        return started
    out: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for uri, champ in sorted(champs.items()):  # one subflow per dataset; a failed one does not stop the others
        state = retrain_dataset(uri, champ.get("test"), params, return_state=True, **opts)
        if state.is_completed():
            out[uri] = state.result()
        else:
            failed[uri] = state.message or state.name
            log.error("retraining %s failed: %s", uri, failed[uri])
    if failed:
        raise RuntimeError("retraining failed for " + "; ".join(f"{u}: {e}" for u, e in failed.items()))
    artifacts.finish_retrain_summary(summary_id, out)
    return {"datasets": out}
