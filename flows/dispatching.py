"""Following dispatched flow runs: one per backbone, per chunk of the manifest step or per feature chunk of a
backbone (started by ``train-all`` and ``retrain``), or one per chunk of a batch prediction (started by ``predict``).

Each run has its own start clock, restarted on each of its state changes; a run that never starts is cancelled only
when no worker polls its pool; every given-up run's state says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.states import Cancelled, Cancelling

from scene.data.chunking import require_chunks as require_chunks  # the flows check chunk counts here


@dataclass
class _Watched:
    """One dispatched run as the dispatcher follows it: its device and when its state last changed."""

    run_id: UUID
    device: str | None
    since: float  # monotonic time of the last state change seen (the run's own start clock)
    seen: tuple[Any, ...] = ()


def await_runs(names: list[str], submit: Callable[[str, str | None], UUID], devices: list[str] | None,
               start_timeout_s: float, dispatch_timeout_s: float, poll: float) -> dict[str, tuple[UUID, State]]:
    """Submit one run per name (at most one per device when ``devices`` are given) and follow each to a final state.

    Each run has its own start clock, restarted on each of its state changes (so a run that waits in line, or one a
    preempted pod sends back to Scheduled, is followed, not cancelled). A run still Scheduled/Pending after
    ``start_timeout_s`` since its last change is cancelled only when no worker polls its work pool (the pool is not
    READY): waiting for a busy pool is not a failure. A run not final after ``dispatch_timeout_s`` is cancelled too.
    Each given-up run's state carries the reason.
    """
    log = get_run_logger()
    began = time.monotonic()
    waiting, free = list(names), list(devices) if devices else None
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
                        pools[name] = pool_status(client, name)
                    if pools[name] == "READY":
                        continue  # a worker polls the pool: the run waits for a slot (or its infrastructure)
                    final = give_up(client, w.run_id, state, f"never started: still {state.name} after "
                                     f"{now - w.since:.0f} s (start_timeout_s={start_timeout_s:g}); no worker polls "
                                     f"its work pool {name!r} (status {pools[name]}): start one with `prefect "
                                     f"worker start --pool {name}`")
                elif now - began > dispatch_timeout_s:
                    final = give_up(client, w.run_id, state, f"not finished after {now - began:.0f} s "
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


def pool_status(client: Any, name: str) -> str:
    """A work pool's status (READY when a worker polls it), or why it cannot be read."""
    try:
        pool = client.read_work_pool(name)
    except Exception as err:  # a deleted pool: nobody will start the run
        return f"unreadable: {err}"
    return "PAUSED" if pool.is_paused else str(getattr(pool.status, "value", pool.status))


def give_up(client: Any, run_id: UUID, state: State, reason: str) -> State:
    """Cancel a dispatched run the orchestrator stops waiting for; the returned state names why."""
    get_run_logger().error("flow run %s %s; cancelling it", run_id, reason)
    final = Cancelled(message=reason)
    try:  # a run no worker holds is cancelled at once; a held one is asked to stop (its worker kills it)
        client.set_flow_run_state(run_id, final if state.type == StateType.SCHEDULED else Cancelling(message=reason),
                                  force=True)
    except Exception as err:  # the table still reports the backbone as failed
        get_run_logger().warning("could not cancel flow run %s: %s", run_id, err)
    return final


def run_chunks(deployment: str, chunks: int, parameters: dict[str, Any], *, label: str, tags: list[str],
               redo: str, start_timeout_s: float, timeout_s: float, poll: float = 3.0) -> dict[int, tuple[UUID, State]]:
    """One run of ``deployment`` per chunk (``parameters`` plus ``chunk``: 0..chunks-1), followed like dispatched
    backbones (:func:`await_runs`); each chunk's run id and final state. A chunk that does not complete is a warning
    naming its run and what happens instead (``redo``), never fatal: the other chunks' work stays."""
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run as this_run

    log = get_run_logger()
    parent = this_run.get_id()
    index = {f"{label} chunk {i + 1}/{chunks}": i for i in range(chunks)}  # also the runs' names

    def submit(name: str, device: str | None) -> UUID:
        i = index[name]
        run = run_deployment(deployment, parameters={**parameters, "chunk": i}, timeout=0, flow_run_name=name,
                             tags=tags, idempotency_key=f"{parent}:{label}:chunk{i}/{chunks}" if parent else None)
        log.info("created %s flow run %s for %s", deployment, run.id, name)
        return run.id

    started = time.monotonic()
    outcome = await_runs(list(index), submit, None, start_timeout_s, timeout_s, poll)
    failed = {name: (run_id, state) for name, (run_id, state) in outcome.items() if not state.is_completed()}
    for name, (run_id, state) in sorted(failed.items()):
        log.warning("%s (flow run %s) ended %s: %s; %s", name, run_id, state.name,
                    state.message or state.name, redo)
    log.info("%s: %d of %d chunks completed on %s in %.0f s", label, chunks - len(failed), chunks, deployment,
             time.monotonic() - started)
    return {index[name]: outcome[name] for name in outcome}


def extract_in_chunks(backbone: str, params: Any, manifest_uri: str, chunks: int, deployment: str, *,
                      feature_cache: str | None, on_missing_weights: str, start_timeout_s: float = 1800.0,
                      timeout_s: float = 6 * 3600.0, poll: float = 3.0) -> dict[int, State]:
    """One ``extract-chunk`` flow run per chunk of the manifest's images on the deployment's pool (:func:`run_chunks`);
    each chunk's final state. A chunk that fails is reported, not fatal: the shards of every other chunk stay in the
    cache and the caller extracts what is missing itself."""
    if feature_cache is not None and not feature_cache.startswith("s3://"):
        get_run_logger().warning("feature cache %s is a local folder: chunk runs on other machines write where this "
                                 "run cannot read (set SCENE_FEATURE_CACHE to an s3:// URI)", feature_cache)
    base = {"backbone": backbone, "manifest_uri": manifest_uri, "chunks": chunks, "params": params.model_dump(),
            "feature_cache": feature_cache, "on_missing_weights": on_missing_weights}
    out = run_chunks(deployment, chunks, base, label=backbone, tags=["scene", backbone, "feature-chunk"],
                     redo="its images are extracted by this run instead", start_timeout_s=start_timeout_s,
                     timeout_s=timeout_s, poll=poll)
    return {i: state for i, (_, state) in out.items()}


def chunked_reader(data: str, test: str | None, chunks: int, deployment: str, *, start_timeout_s: float = 1800.0,
                   timeout_s: float = 6 * 3600.0) -> Callable[[list[Any], Any], Any] | None:
    """The manifest step's reader for ``chunks`` > 1 (None: read in the building run): the files to read split
    over ``chunks`` runs of ``deployment`` (:mod:`flows.read_chunk`), listings and parts under this run's
    ``reading/`` folder; a chunk whose run left no part of its listing is read by the building run. Nothing to read
    (every object unchanged): no run is started."""
    if chunks <= 1:
        return None

    def read(files: list[Any], packer: Any) -> Any:
        from scene.data import reading
        from tasks.common import run_prefix, s3

        if not files:  # nothing new or changed: no run to start
            return reading.ReadRows([], [])
        folder = reading.folder_for(run_prefix())
        listings = reading.split_files(files, folder, chunks, s3())
        run_chunks(deployment, chunks, {"data": data, "test": test, "folder": folder, "chunks": chunks},
                   label="read", tags=["scene", "read-chunk"], redo="this run reads its images",
                   start_timeout_s=start_timeout_s, timeout_s=timeout_s)
        got, here = reading.collect(folder, listings, s3(), roots=reading.roots(data, test), writer=packer)
        get_run_logger().info("%d files read in %d chunk runs%s", len(files), chunks,
                              f"; chunks {[i + 1 for i in here]} read here (no part of their listing)" if here else "")
        return got

    return read
