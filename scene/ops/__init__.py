"""Operations: the local stack, the storage-event bridge and ``scene runs watch``; the one wing of ``scene`` that
imports Prefect (its own client, through :mod:`~scene.ops.prefect_api`), always inside functions.

Stack: :mod:`~scene.ops.supervisor` (detached processes, PID files, health waits),
:mod:`~scene.ops.services` (how each service is started and checked; pools, Secret blocks and the zombie
automation through Prefect's client), :mod:`~scene.ops.stack` (``scene stack up/down/status/env``). Bridge:
:mod:`~scene.ops.notifications` (parse and filter bucket notifications), :mod:`~scene.ops.batcher` (one event per
dataset burst, bounded memory, one id per batch), :mod:`~scene.ops.prefect_events` (the event and its confirmed
delivery), :mod:`~scene.ops.bridge` (the HTTP server), :mod:`~scene.ops.polling` (the polling sensor's diff),
:mod:`~scene.ops.reconcile` (announce missed datasets). :mod:`~scene.ops.watch`: ``scene runs watch``.
:mod:`~scene.ops.http` is a plain HTTP client for health probes (never Prefect credentials).
"""
