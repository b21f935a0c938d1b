"""Operations: the local stack and the storage-event bridge (nothing here imports Prefect).

Stack: :mod:`~scene.ops.supervisor` (detached processes, PID files, health waits),
:mod:`~scene.ops.services` (how each service is started and checked), :mod:`~scene.ops.stack`
(``scene stack up/down/status/env``). Bridge: :mod:`~scene.ops.notifications` (parse and filter bucket
notifications), :mod:`~scene.ops.batcher` (one event per dataset burst, bounded memory, one id per batch),
:mod:`~scene.ops.prefect_events` (the event and its confirmed delivery), :mod:`~scene.ops.bridge` (the HTTP
server), :mod:`~scene.ops.polling` (the polling sensor's diff), :mod:`~scene.ops.reconcile` (announce missed
datasets). :mod:`~scene.ops.http` is the one small HTTP JSON client they and ``scene runs watch`` share.
"""
