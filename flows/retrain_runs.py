"""The retrain flow's run-level rules: end early as duplicate or superseded, one slot per dataset, weekly fan-out.

The verdicts themselves are in :mod:`scene.ops.coalesce` (no Prefect there); this module reads the runs from the
Prefect API and takes the slots.

* :func:`ends_early`: ``retrain`` calls it at start, while it waits for its dataset's slot, and once it holds it.
* :func:`in_slot`: a global concurrency limit of 1 per dataset (``retrain:<slug>``),
  created on first use (Prefect 3.9 no longer creates missing limits), so two datasets train at once while one
  dataset trains one run at a time; a waiting run re-checks every ``SLOT_POLL_S`` seconds, so the waiting runs of
  a dataset collapse to the newest (superseded). Slots are leases (300 s, renewed): a run whose process died
  frees its slot within minutes even if its state stays Running.
* :func:`fan_out`: the weekly run (no ``data``) started from the deployment creates one ``retrain`` run per
  champion's dataset and returns, instead of training them one after another inside one run.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import deployment as this_deployment
from prefect.runtime import flow_run as this_run

from scene.ops.coalesce import RunInfo, slot_name, verdict

FLOW = "retrain"
LOOK_BACK = 200  # newest retrain runs read for the verdict
SLOT_POLL_S = 15.0  # a run waiting for its dataset's slot checks this often whether a newer run superseded it


def _info(run: FlowRun) -> RunInfo:
    params = run.parameters or {}
    return RunInfo(id=str(run.id), name=run.name, created=run.created or run.expected_start_time,  # type: ignore[arg-type]
                   state_type=run.state_type.value if run.state_type else "SCHEDULED",
                   data=params.get("data"), change_id=params.get("change_id") or None)


def retrain_runs(data: str) -> list[RunInfo]:
    """The newest retrain runs of ``data`` (any state)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])), limit=LOOK_BACK,
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC)
    return [_info(r) for r in runs if (r.parameters or {}).get("data") == data]


def ends_early(data: str, change_id: str | None) -> dict[str, Any] | None:
    """The result to end this run with (``{"skipped": "duplicate" | "superseded", ...}``), or None to train."""
    run_id = this_run.get_id()
    if not run_id:  # not a flow run (nothing to coalesce with)
        return None
    runs = retrain_runs(data)
    me = next((r for r in runs if r.id == str(run_id)), None)
    if me is None:
        with get_client(sync_client=True) as client:
            me = _info(client.read_flow_run(run_id))
        runs.append(me)
    me = RunInfo(me.id, me.name, me.created, me.state_type, data, change_id or None)  # as this run was called
    runs = [me if r.id == me.id else r for r in runs]
    found = verdict(me, runs)
    if found is None:
        return None
    kind, reason = found
    get_run_logger().info("ending as %s without training: %s", kind, reason)
    return {"data": data, "skipped": kind, "reason": reason, "change_id": change_id}


def ensure_slot(name: str) -> None:
    """Create the global concurrency limit ``name`` (1 slot) unless it exists."""
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def in_slot(data: str, change_id: str | None, train: Callable[[], dict]) -> dict:
    """``train()`` in ``data``'s slot, unless this run ends early: checked at start, every ``SLOT_POLL_S`` while it
    waits for the slot (so a dataset has at most one waiting run, the newest), and once it holds the slot."""
    early = ends_early(data, change_id)
    if early is not None:
        return early
    name = slot_name(data)
    ensure_slot(name)
    log = get_run_logger()
    log.info("waiting for %s's training slot %s", data, name)
    poll = float(os.environ.get("SCENE_SLOT_POLL_S") or SLOT_POLL_S)
    while not _slot_free(name):  # wait here, not inside Prefect's acquire: a waiting run must notice newer ones
        time.sleep(poll)
        early = ends_early(data, change_id)
        if early is not None:
            return early
    with concurrency(name, occupy=1, strict=True, raise_on_lease_renewal_failure=False):  # a race: waits briefly
        early = ends_early(data, change_id)
        return early if early is not None else train()


def _slot_free(name: str) -> bool:
    """Whether the limit has a free slot now."""
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    return limit.active_slots < limit.limit


def fan_out(champs: dict[str, dict]) -> dict[str, Any] | None:
    """From a deployment: one ``retrain`` run per champion's dataset (same parameters, ``data`` set); the started
    runs. None when this run is not from a deployment (then ``retrain`` trains them itself, one after another)."""
    from prefect.deployments import run_deployment

    name = this_deployment.name  # attributes, not get_*(): they honour PREFECT__RUNTIME__* overrides
    if not this_deployment.id or not name:
        return None
    log = get_run_logger()
    parent = str(this_run.id)
    base = {k: v for k, v in (this_run.parameters or {}).items() if k not in ("data", "test", "change_id")}
    started: dict[str, Any] = {}
    for uri, champ in sorted(champs.items()):
        params = {**base, "data": uri, **({"test": champ["test"]} if champ.get("test") else {})}
        run = run_deployment(f"{FLOW}/{name}", parameters=params, timeout=0, as_subflow=False,
                             idempotency_key=f"weekly:{parent}:{uri}")  # a retried weekly run starts no twins
        started[uri] = {"flow_run": str(run.id), "name": run.name}
        log.info("started retrain run %s for %s", run.name, uri)
    return {"datasets": started, "fanned_out": len(started)}
