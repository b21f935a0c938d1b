"""Backbone faults on the real stack (issue 10, scenarios 8 and 13, item 11): each backbone trains in a process of
its own, so a SIGKILL (what the kernel's out-of-memory killer sends) to one leaves the others training; a run
whose every backbone failed ends Failed; an error that cannot succeed on retry (missing weights) is not retried.

Here (not in tests/faults/) to share the session stack of tests/integration/conftest.py."""

from __future__ import annotations

import contextvars
import io
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scene.data import storage
from scene.data.synth import make_synthetic
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.s3io import read_json, upload

pytestmark = [pytest.mark.integration, pytest.mark.faults]
BACKBONES = ["mobilenetv2", "efficientnetb0"]


@pytest.fixture(scope="module")
def dataset(s3: Any, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    root = make_synthetic(tmp_path_factory.mktemp("d") / "procs", 8, size=40, seed=21)
    return upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}faults-procs/")


def _params(**given: Any) -> Any:
    from scene.train.params import TrainParams

    return TrainParams(**{"weights": "none", "epochs": 2, "views": 0, "image_size": 32, **given})


def _training_children() -> list[int]:
    """Pids of this process's children started by multiprocessing's spawn (one per backbone)."""
    me, out = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and b"spawn_main" in cmd:
            out.append(int(stat.parent.name))
    return out


def _runs_tagged(tag: str, since: float) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
    return [r for r in runs if r.created and r.created.timestamp() >= since]


def test_sigkill_of_one_backbone_process_leaves_the_others_training(dataset: str, s3: Any) -> None:
    from flows.train_all import train_all

    since, out = time.time() - 1, {}
    worker = threading.Thread(target=contextvars.copy_context().run, daemon=True, args=(lambda: out.update(
        state=train_all(data=dataset, params=_params(backbones=BACKBONES), promote=False, return_state=True)),))
    worker.start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # both backbones' subflow runs are Running in their own processes
        running = [r for b in BACKBONES for r in _runs_tagged(f"backbone:{b}", since) if r.state.is_running()]
        children = _training_children()
        if len(running) == 2 and len(children) == 2:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the two backbone processes never ran: children {_training_children()}")
    victim = children[0]
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=400)
    state = out["state"]
    assert state.is_completed(), state.message
    res = state.result()
    (killed,) = [r for r in res["results"] if r["status"] == "failed"]
    (survivor,) = [r for r in res["results"] if r["status"] != "failed"]
    assert f"(pid {victim}) was killed by SIGKILL" in killed["error"] and "marked Crashed" in killed["error"], killed
    assert survivor["status"] in ("ok", "collapsed") and Path(survivor["model_path"]).is_file(), survivor
    stored = read_json(s3, f"{res['prefix']}{survivor['backbone']}/result.json")  # how it came back to the flow
    assert (stored["backbone"], stored["status"]) == (survivor["backbone"], survivor["status"]), stored
    assert stored["metrics"]["test"]["accuracy"] == survivor["metrics"]["test"]["accuracy"] > 0, stored["metrics"]
    (run,) = _runs_tagged(f"backbone:{killed['backbone']}", since)
    assert run.state.is_crashed() and f"pid {victim}" in (run.state.message or ""), run.state
    table = pd.read_csv(io.BytesIO(storage.read_bytes(res["prefix"] + "comparison.csv", s3)))
    rows = dict(zip(table["backbone"], table["status"], strict=True))
    assert rows[killed["backbone"]] == "failed" and rows[survivor["backbone"]] != "failed", rows


def test_retrain_fails_when_every_backbone_failed_and_missing_weights_are_not_retried(dataset: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    from flows.retrain import retrain

    state = retrain(data=dataset, params=_params(backbones=["vgg16"], weights="imagenet"), on_missing_weights="fail",
                    return_state=True)
    assert state.is_failed(), state
    with pytest.raises(RuntimeError, match=r"every backbone failed: vgg16: .*vgg16_weights_tf_dim_ordering_tf_"
                                           r"kernels_notop\.h5"):
        state.result()
    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[c.id for c in children])))
    (check,) = [t for t in tasks if re.fullmatch(r"check weights vgg16", t.name)]
    assert check.state.is_failed() and check.run_count == 1, (check.state, check.run_count)  # not retried


def test_a_backbone_that_raises_is_marked_failed_with_its_error_while_the_other_finishes(
        s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    """Scenario 8, an ordinary exception: efficientnetb0 is handed a MobileNetV2 weights file and raises; the
    MobileNetV2 run finishes, the run completes, and the table's row names the error. (Hue images and a calibrated
    weights file: with a weights file the data audits run, and they need features that are not degenerate.)"""
    from flows.train_all import train_all

    data = upload(s3, draw_hues(tmp_path / "hues", 0, size=32, per_class=8),
                  f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}faults-raises/")
    weights = calibrated_mobilenetv2(tmp_path, 32)
    state = train_all(data=data, params=_params(backbones=BACKBONES, weights=weights), promote=False,
                      return_state=True)
    assert state.is_completed(), state.message
    res = state.result()
    by = {r["backbone"]: r for r in res["results"]}
    assert by["mobilenetv2"]["status"] != "failed" and Path(by["mobilenetv2"]["model_path"]).is_file(), by
    failed = by["efficientnetb0"]
    assert failed["status"] == "failed" and "does not fit efficientnetb0" in failed["error"], failed
    assert res["failed"] == ["efficientnetb0"]
    table = pd.read_csv(io.BytesIO(storage.read_bytes(res["prefix"] + "comparison.csv", s3)))
    row = table.set_index("backbone").loc["efficientnetb0"]
    assert row["status"] == "failed" and "does not fit efficientnetb0" in str(row["error"]), row.to_dict()
