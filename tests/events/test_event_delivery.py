"""Event delivery faults on the real event stack (tests/event_stack.py; work pools paused, so a triggered retrain
run is created but not executed: "a retrain" here is a retrain flow run for the data, and "exactly one" counts the
runs that would train, by the verdict every retrain run applies at start, :func:`scene.ops.coalesce.verdict`).

- the bridge is SIGKILLed right after answering 200 for a burst (before its quiet period ended): the restarted
  bridge replays the persisted objects and the run appears before the first reconcile would (60 s);
- Prefect is stopped in the middle of a burst, restarted, and ``prefect deploy`` recreates the trigger while the
  bridge retries: exactly one run for the burst would train;
- a version registered by a run that died before its gate: ``scene events reconcile`` announces that data (a
  registered version is not a gated one), and leaves it alone once a decision exists; a change whose retrain
  failed is backed off, with the reason;
- ``scene stack down`` while a retrain runs, then ``stack up``: the run ends Crashed with the reason, a run left
  Running with its process gone is crashed at ``up``, and new photos start a retrain that would train.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from scene.ops import stack as stack_mod
from scene.ops import supervisor
from scene.ops.coalesce import RunInfo, verdict
from scene.ops.notifications import polling_config
from scene.ops.polling import root_change_id, snapshot
from tests.support import REPO
from tests.support.events import EXTRA, QUIET, settled, wait_runs
from tests.support.s3io import upload

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _images(tmp: Path, n: int, seed: int) -> Path:
    from scene.data.synth import make_synthetic

    return make_synthetic(tmp, n, size=32, seed=seed, classes=("sea", "forest"))


def _up(estack: dict[str, Any]) -> None:
    cfg = json.loads((estack["state"] / "stack.json").read_text())
    stack_mod.up(estack["state"], s3_port=cfg["s3_port"], prefect_port=cfg["prefect_port"], pools=("default", "gpu"),
                 workdir=REPO, events_port=cfg["events_port"], quiet_seconds=QUIET, extra=EXTRA)


def _info(run: Any) -> RunInfo:
    return RunInfo(str(run.id), run.name, run.created, run.state_type.value if run.state_type else "SCHEDULED",
                   run.parameters.get("data"), run.parameters.get("change_id") or None)


def would_train(runs: list[Any]) -> list[str]:
    """Play the Scheduled runs in creation order, each judging the others (in their real states) as it would at
    start; the names of those that train."""
    infos = sorted((_info(r) for r in runs), key=lambda r: (r.created, r.id))
    trained = []
    for i, me in enumerate(infos):
        if me.state_type != "SCHEDULED":
            continue
        me = infos[i] = RunInfo(me.id, me.name, me.created, "RUNNING", me.data, me.change_id)
        if verdict(me, infos) is None:
            trained.append(me.name)
        infos[i] = RunInfo(me.id, me.name, me.created, "COMPLETED", me.data, me.change_id)
    return trained


def _change(estack: dict[str, Any], data: str) -> str:
    bucket, _, key = data.removeprefix("s3://").partition("/")
    cfg = polling_config(bucket, estack["env"]["SCENE_DATA_PREFIX"])
    root = key
    return root_change_id(cfg, root, snapshot(estack["s3"], cfg, under=root))


def _bridge_stats(estack: dict[str, Any]) -> dict[str, Any]:
    from scene.ops.prefect_events import bridge_stats

    cfg = json.loads((estack["state"] / "stack.json").read_text())
    token = json.loads((estack["state"] / "credentials.json").read_text())["events_token"]
    return bridge_stats(f"http://127.0.0.1:{cfg['events_port']}", token)


def test_bridge_killed_right_after_answering_still_starts_the_retrain_once(estack: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    env, s3, state = estack["env"], estack["s3"], estack["state"]
    data = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}killed-bridge-{uuid.uuid4().hex[:6]}/"
    before = _bridge_stats(estack)
    upload(s3, _images(tmp_path / "d", 2, 11), data)  # 4 objects: the gateway POSTs each, the bridge says 200
    deadline = time.time() + 20
    while _bridge_stats(estack)["objects"] - before["objects"] < 4 and time.time() < deadline:
        time.sleep(0.1)
    stats = _bridge_stats(estack)
    assert stats["objects"] - before["objects"] == 4 and stats["emitted"] == before["emitted"]  # still pending
    pid = json.loads((state / "pids" / "events.pid").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # no flush, no goodbye
    time.sleep(1)
    restarted = time.time()
    _up(estack)  # a new bridge on the same store (the reconcile waits 60 s after start)
    runs = wait_runs(1, data, timeout=40)
    assert runs and runs[0].created.timestamp() - restarted < 40, "not replayed: only the reconcile would find it"
    settled(still=QUIET + 2)
    runs = wait_runs(1, data, timeout=1)
    assert len(runs) == 1 and runs[0].parameters["change_id"] == _change(estack, data)
    assert runs[0].parameters["only_if_changed"] is True
    print(f"bridge killed after 200: run created {runs[0].created.timestamp() - restarted:.1f} s after restart")


def test_prefect_restart_and_deploy_during_a_burst_make_exactly_one_retrain(estack: dict[str, Any],
                                                                           tmp_path: Path) -> None:
    env, s3, state = estack["env"], estack["s3"], estack["state"]
    data = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}restart-{uuid.uuid4().hex[:6]}/"
    started = time.time()
    upload(s3, _images(tmp_path / "a", 2, 21), data + "part1/")
    supervisor.stop(state, stack_mod.PREFECT)  # mid-burst: the bridge's emission fails and is retried
    upload(s3, _images(tmp_path / "b", 2, 22), data + "part2/")
    _up(estack)
    deploy = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--all"],
                            cwd=REPO, env={**os.environ, "SCENE_REPO_DIR": str(REPO)}, capture_output=True,
                            text=True, timeout=300, check=False)  # recreates the trigger while events flow
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    runs = wait_runs(1, data, timeout=120)
    settled(still=max(QUIET, 20.0), timeout=120)  # a resend after a lost event comes 15 s after delivery
    runs = wait_runs(1, data, timeout=1)
    assert runs, "the burst never reached the trigger"
    trains = would_train(runs)
    assert len(trains) == 1, [(r.name, r.parameters.get("change_id")) for r in runs]
    final = _change(estack, data)
    assert final in {r.parameters.get("change_id") for r in runs}  # the complete upload is what trains
    print(f"prefect restart + deploy mid-burst: {len(runs)} runs created, 1 would train; {time.time() - started:.0f} s")


def _register_ungated(s3: Any, artifact_bucket: str, data: str, keys: list[str], tmp: Path) -> Any:
    """A version of ``data`` registered as train-backbone does, by a run that died before the gate."""
    import numpy as np
    import pandas as pd

    from scene import registry

    folder = tmp / "version"
    folder.mkdir()
    (folder / "model.keras").write_bytes(os.urandom(256))
    meta = {"backbone": "mobilenetv2", "data_fingerprint": "fp", "random_init": False, "synthetic_data": True,
            "data_source": data}
    (folder / "metrics.json").write_text(json.dumps({"test": {"n": 2, "accuracy": 1.0, "f1_weighted": 1.0,
                                                                "f1_macro": 1.0, "collapsed": False}, "meta": meta}))
    (folder / "config.json").write_text(json.dumps({"backbone": "mobilenetv2"}))
    pd.DataFrame({"key": keys}).to_csv(folder / "manifest.csv", index=False)
    preds = pd.DataFrame({"key": keys[:2], "sha256": [f"{i:064x}" for i in range(2)], "y_true": [0, 1],
                          "y_pred": [0, 1], "correct": np.array([True, True])})
    return registry.register(s3, artifact_bucket, folder, "mobilenetv2", preds, dataset=data)


def _reconcile(bucket: str) -> dict[str, Any]:
    cli = [str(Path(sys.executable).with_name("scene")), "events", "reconcile", "--bucket", bucket]
    done = subprocess.run(cli, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_reconcile_announces_registered_but_ungated_data_and_backs_off_failing_data(estack: dict[str, Any],
                                                                                    tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    from scene.data import storage

    env, s3 = estack["env"], estack["s3"]
    bucket = f"quiet-{uuid.uuid4().hex[:8]}"  # no notifications: only the reconcile announces
    s3.create_bucket(Bucket=bucket)
    data = f"s3://{bucket}/{env['SCENE_DATA_PREFIX']}ungated/"
    upload(s3, _images(tmp_path / "d", 2, 31), data)
    keys = sorted(snapshot(s3, polling_config(bucket, env["SCENE_DATA_PREFIX"])))
    version = _register_ungated(s3, env["SCENE_ARTIFACT_BUCKET"], data, keys, tmp_path)
    first = _reconcile(bucket)
    assert first["announced"] == [data], first  # registered is not gated: a retrain must gate it
    (run,) = wait_runs(1, data)
    assert run.parameters["change_id"] == _change(estack, data)
    with get_client(sync_client=True) as client:  # its retrain fails on the data (as validation would)
        client.set_flow_run_state(run.id, Failed(message="DatasetError: class 'sea' has 2 images; need 3"),
                                  force=True)
    second = _reconcile(bucket)
    assert second["announced"] == [] and "need 3" in second["backoff"][data], second
    assert len(wait_runs(2, data, timeout=3)) == 1  # nothing announced while backing off
    storage.write_bytes(version.uri.rstrip("/") + "/decision.json", b'{"promote": false}', s3)  # gated now
    third = _reconcile(bucket)
    assert third == {"announced": [], "skipped": [], "backoff": {}, "failed": {}}, third


def test_stack_stop_during_a_retrain_then_start_never_blocks_retraining(estack: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Running

    env, s3 = estack["env"], estack["s3"]
    data = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}stopped-{uuid.uuid4().hex[:6]}/"
    busy = subprocess.Popen(["sleep", "600"])  # stands for the retrain's process under the stack's worker
    zombie_proc = subprocess.Popen(["true"])
    zombie_proc.wait()  # a pid whose process is gone
    try:
        running = run_deployment("retrain/default", parameters={"data": data, "change_id": "c-running"}, timeout=0)
        zombie = run_deployment("retrain/default", parameters={"data": data, "change_id": "c-zombie"}, timeout=0)
        with get_client(sync_client=True) as client:
            for run, pid in ((running, busy.pid), (zombie, zombie_proc.pid)):
                client.set_flow_run_state(run.id, Running(), force=True)
                client.update_flow_run(run.id, infrastructure_pid=str(pid))
        stack_mod.down(estack["state"])  # the running one: its process ended, the run Crashed with the reason
        assert busy.wait(timeout=20) == -signal.SIGTERM
        _up(estack)
        with get_client(sync_client=True) as client:
            ended = client.read_flow_run(running.id).state
            left = client.read_flow_run(zombie.id).state
        assert ended.is_crashed() and "scene stack down" in (ended.message or ""), ended
        assert left.is_crashed(), left  # crashed at down (its pid was recorded) or at up (its process is gone)
        # a run left Running by a stop whose Prefect server was gone: crashed at the next up
        lost = run_deployment("retrain/default", parameters={"data": data, "change_id": "c-lost"}, timeout=0)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(lost.id, Running(), force=True)
            client.update_flow_run(lost.id, infrastructure_pid=str(zombie_proc.pid))
        _up(estack)
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(lost.id).state
        assert state.is_crashed() and "is gone" in (state.message or ""), state
        since = datetime.now(UTC)
        upload(s3, _images(tmp_path / "new", 2, 41), data)  # new photos after the restart
        runs = [r for r in wait_runs(4, data, timeout=60) if r.created >= since]
        assert len(runs) == 1 and runs[0].parameters["change_id"] == _change(estack, data)
        assert would_train(wait_runs(4, data, timeout=1)) == [runs[0].name]  # nothing earlier holds it back
    finally:
        if busy.poll() is None:
            busy.kill()
