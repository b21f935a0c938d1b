"""Issue 24, item 2: batch prediction sharded over a work pool, streamed into Parquet + CSV parts and a manifest.

``predict`` with ``chunks=3`` splits its listing (30 photos, a broken .jpg, a text file) into three chunks and starts a
``predict-chunk`` run per chunk on the session stack's `default` process pool. The first chunk run seen Running is
SIGKILLed: it ends Crashed, ``predict`` predicts that chunk itself, the two other parts are the chunk runs' own; the
manifest lists three parts whose files match their sha256, and together they hold exactly the rows of an unsharded
``predict`` of the same files (every file once, the same labels and errors, probabilities within the CSV's 6 decimals).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest

from scene.data import storage
from scene.model import parts
from tests.support.hues import draw_hues
from tests.support.procs import kill_first_running, watching
from tests.support.runs import child_runs, deploy_on_default_pool
from tests.support.s3io import read_csv, read_json, upload

pytestmark = pytest.mark.integration
SIZE = 32
P = [f"p_{c}" for c in ("buildings", "forest", "glacier", "mountain", "sea", "street")]


@pytest.fixture(scope="module")
def deployment(env: dict[str, str]) -> str:
    """A predict-chunk deployment on the `default` pool (the session stack's process worker runs it)."""
    return deploy_on_default_pool("predict-chunk", "flows/predict.py:predict_chunk", f"parts-{uuid.uuid4().hex[:6]}")


def _model(folder: Path, s3: Any, uri: str) -> str:
    """A small seeded convolutional classifier of the six classes, saved and uploaded to ``uri``."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inp))
    out = keras.layers.Dense(6, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(
        keras.layers.GlobalAveragePooling2D()(x))  # decisive: no near-ties whose argmax float rounding could flip
    path = folder / "model.keras"
    keras.Model(inp, out).save(path)
    storage.upload_file(path, uri, s3)
    return uri


def _task_runs(flow_run_id: Any, name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r for r in runs if r.name.startswith(name)]


def test_three_chunks_one_killed_predict_every_file_once_as_an_unsharded_run(
        deployment: str, s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.predict import predict

    art, tag = env["SCENE_ARTIFACT_BUCKET"], uuid.uuid4().hex[:8]
    data = upload(s3, draw_hues(tmp_path / "hues", 0, size=SIZE, per_class=5),
                  f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}to-predict-{tag}/")
    storage.write_bytes(data + "broken.jpg", b"not an image", s3)
    storage.write_bytes(data + "notes.txt", b"x", s3)
    model = _model(tmp_path, s3, f"s3://{art}/predictions/model-{tag}/model.keras")

    plain = predict(data=data, model=model, out=f"s3://{art}/predictions/plain-{tag}/predictions.csv")
    expected = read_csv(s3, plain["predictions"], keep_default_na=False).set_index("key").sort_index()
    assert (plain["images"], plain["unreadable"], len(expected)) == (30, 2, 32)

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
    with watching(kill_first_running, deployment_id) as killed:
        state = predict(data=data, model=model, out=f"s3://{art}/predictions/sharded-{tag}/predictions.csv",
                        chunks=3, chunk_deployment=deployment, start_timeout_s=120, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert killed, "no chunk run was killed: the test did not exercise a lost chunk"
    runs = {r.id: r for r in child_runs(state.state_details.flow_run_id) if r.deployment_id is not None}
    assert len(runs) == 3 and (runs[killed["run"]].state.is_crashed() or runs[killed["run"]].state.is_failed())
    assert all(r.state.is_completed() for i, r in runs.items() if i != killed["run"]), runs
    assert len(_task_runs(state.state_details.flow_run_id, "predict part")) == 1  # only the lost chunk, here

    folder = f"s3://{art}/predictions/sharded-{tag}/"
    assert out["predictions"] == parts.manifest_uri(folder) and (out["images"], out["unreadable"]) == (30, 2)
    doc = read_json(s3, out["predictions"])
    assert [p["chunk"] for p in doc["parts"]] == [0, 1, 2] and doc["rows"] == 32
    assert all(p["rows"] > 0 for p in doc["parts"])  # 32 keys over three chunks: none empty here
    got = pd.concat(parts.read_predictions(out["predictions"], s3), ignore_index=True)  # checks each sha256
    assert got["key"].is_unique and len(got) == 32
    got = got.set_index("key").sort_index()
    assert list(got.index) == list(expected.index)
    assert (got["label"] == expected["label"]).all()
    assert got["error"].to_dict() == expected["error"].to_dict()
    ok = got["error"] == ""
    assert np.abs(got.loc[ok, P].to_numpy(float) - expected.loc[ok, P].to_numpy(float)).max() <= 2e-6
    as_csv = pd.concat(parts.read_predictions(out["predictions"], s3, kind="csv"), ignore_index=True)
    assert sorted(as_csv["key"]) == sorted(got.index)  # the CSV parts hold the same rows
