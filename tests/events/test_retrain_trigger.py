"""Storage events → the bridge → scene.data.arrived → the retrain deployment trigger, on a real stack.

The stack with the event bridge (quiet period 5 s) and prefect.yaml deployed is shared with tests/faults
(tests/event_stack.py). Its work pools are paused, so triggered retrain runs are created (what the trigger does)
but not executed; the retrain flow itself is tested in test_retrain.py.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from scene.data import storage
from scene.data.synth import make_synthetic
from scene.ops import stack as stack_mod
from scene.ops import supervisor
from tests.support import REPO
from tests.support.events import EXTRA, QUIET, bridge, drained, retrain_runs, settled, wait_runs
from tests.support.polling import eventually
from tests.support.s3io import upload
from tests.support.stackenv import api_settings

pytestmark = pytest.mark.integration


def _images(tmp: Path, n_per_class: int, seed: int) -> Path:
    return make_synthetic(tmp, n_per_class, size=40, seed=seed, classes=("sea", "forest"))


def test_a_burst_of_uploads_starts_exactly_one_retrain(estack: dict[str, Any], tmp_path: Path) -> None:
    env, s3 = estack["env"], estack["s3"]
    data = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}burst/"
    before = bridge(estack)
    started = time.time()
    upload(s3, _images(tmp_path / "burst", 3, 1), data)  # 6 objects, one burst
    runs = wait_runs(1, data)
    latency = (runs[0].created.timestamp() - started) if runs else None
    after = drained(estack, before, objects=6)  # all 6 counted and batched, nothing pending: no later batch
    assert after["emitted"] > before["emitted"], (before, after)
    runs = [r for r in retrain_runs() if r.parameters.get("data") == data]
    assert len(runs) == 1, [r.parameters for r in runs]
    assert int(runs[0].parameters["new_objects"]) == 6
    print(f"upload → retrain flow run created: {latency:.1f} s (quiet period {QUIET} s)")


def test_rejected_requests_and_unrelated_prefixes_start_nothing(estack: dict[str, Any], tmp_path: Path) -> None:
    env, s3, cfg = estack["env"], estack["s3"], json.loads((estack["state"] / "stack.json").read_text())
    before, counters = len(retrain_runs()), bridge(estack)
    url = f"http://127.0.0.1:{cfg['events_port']}/notify"
    body = json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": env["SCENE_DATA_BUCKET"]}, "object": {"key": "datasets/forged/sea/x.jpg", "size": 1}}}]})
    for headers, data in (({"Authorization": "Bearer wrong"}, body.encode()), ({}, body.encode()),
                          ({"Authorization": f"Bearer {_token(estack)}"}, b"{not json")):
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code in (400, 401)
    upload(s3, _images(tmp_path / "other", 1, 2), f"s3://{env['SCENE_DATA_BUCKET']}/unrelated/")
    # the gateway sends nothing for keys outside the subscribed prefix; a marker uploaded after them, inside it, is
    # delivered after anything they could have caused: once it is counted and emitted, the bridge saw all there was
    marker = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}marker-after-unrelated/"
    image = sorted(_images(tmp_path / "marker", 1, 5).rglob("*.jpg"))[0]
    storage.upload_file(image, f"{marker}{image.parent.name}/{image.name}", s3)
    after = drained(estack, counters, objects=1)  # the marker only: nothing from the unrelated prefix
    assert after["rejected"] - counters["rejected"] == 3 and after["emitted"] - counters["emitted"] == 1, after
    runs = wait_runs(1, marker)
    assert len(runs) == 1 and len(retrain_runs()) == before + 1


def _token(estack: dict[str, Any]) -> str:
    return json.loads((estack["state"] / "credentials.json").read_text())["events_token"]


def test_events_raised_while_the_bridge_is_down_arrive_later(estack: dict[str, Any], tmp_path: Path) -> None:
    env, s3, state = estack["env"], estack["s3"], estack["state"]
    cfg = json.loads((state / "stack.json").read_text())
    data = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}late/"
    supervisor.stop(state, stack_mod.EVENTS)
    upload(s3, _images(tmp_path / "late", 2, 3), data)
    time.sleep(2)
    assert retrain_runs() == [] or all(r.parameters.get("data") != data for r in retrain_runs())
    stack_mod.up(state, s3_port=cfg["s3_port"], prefect_port=cfg["prefect_port"], pools=("default", "gpu"),
                 workdir=REPO, events_port=cfg["events_port"], quiet_seconds=QUIET, extra=EXTRA)
    runs = wait_runs(1, data, timeout=90)
    eventually(lambda: bridge(estack)["pending"] == 0, 60, "the restarted bridge emitting every batch it holds")
    runs = [r for r in retrain_runs() if r.parameters.get("data") == data]
    assert len(runs) == 1, [r.parameters for r in runs]


def test_polling_sensor_starts_retrains_only_for_changes(estack: dict[str, Any], tmp_path: Path) -> None:
    from prefect.settings import temporary_settings

    from flows.watch import watch

    env, s3 = estack["env"], estack["s3"]
    prefix = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}"
    with temporary_settings(updates=api_settings(env)):
        watch(prefix_uri=prefix)  # first run: records the state (and announces what is there)
        before = settled()
        assert watch(prefix_uri=prefix)["emitted"] == []  # nothing changed: no event, no retrain
        assert settled() == before
        data = prefix + "polled/"
        upload(s3, _images(tmp_path / "polled", 1, 4), data)
        out = watch(prefix_uri=prefix)
    assert out["emitted"], out
    runs = wait_runs(1, data)
    assert len(runs) == 1


def test_deployed_pools_and_the_schedule_that_retrains_champions(estack: dict[str, Any]) -> None:
    """As deployed from prefect.yaml: the GPU orchestrator waits on the CPU pool; retrain has no default dataset."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name("train-all/gpu").work_pool_name == "default"
        assert client.read_deployment_by_name("train-backbone/gpu").work_pool_name == "gpu"
        retrain = client.read_deployment_by_name("retrain/default")
    assert "data" not in retrain.parameters, retrain.parameters  # no data: the schedule retrains champions
    assert [s.parameters for s in retrain.schedules] == [{"only_if_changed": True}]


def test_the_weekly_run_starts_one_retrain_run_per_dataset_once(estack: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduled run (no data) from the deployment fans out one retrain run per champion's dataset (with the
    champion's test root) and returns; a retried weekly run starts no twins (idempotency key per parent+dataset)."""
    import uuid

    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows import retrain_runs as rr

    tag = uuid.uuid4().hex[:6]
    prefix = f"s3://{estack['env']['SCENE_DATA_BUCKET']}/{estack['env']['SCENE_DATA_PREFIX']}"
    champs = {f"{prefix}weekly-a-{tag}/": {}, f"{prefix}weekly-b-{tag}/": {"test": f"{prefix}weekly-b-{tag}-test/"}}
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/default")
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(deployment.id))  # as if run by the schedule
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__NAME", "default")

    @flow(name="weekly-probe")
    def weekly(only_if_changed: bool = True) -> list[dict]:
        return [rr.fan_out(champs), rr.fan_out(champs)]  # the second: a retry of the same weekly run

    first, again = weekly()
    assert first["fanned_out"] == 2 and again["datasets"] == first["datasets"]
    runs = {d: wait_runs(1, d, timeout=30) for d in champs}
    assert {d: len(r) for d, r in runs.items()} == dict.fromkeys(champs, 1)
    a, b = (runs[d][0].parameters for d in champs)
    assert a["only_if_changed"] is True and "test" not in a and b["test"] == champs[f"{prefix}weekly-b-{tag}/"]["test"]
