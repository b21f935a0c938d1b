"""The Prefect flows against the real local stack: a Prefect server, the JuiceFS S3 gateway, process workers."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scene import registry
from scene.data import storage
from scene.data.synth import make_synthetic
from tests.support.runs import deploy_on_default_pool
from tests.support.s3io import upload
from tests.support.watching import backbone_lines, run_watched

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FAST = {"epochs": 2, "views": 1, "image_size": 32}
START_S = 45  # the started run must leave Scheduled within it: an engine process importing TF, slow under load


def _params(**given: Any) -> Any:
    from scene.train.params import TrainParams

    return TrainParams(**{**FAST, **given})


@pytest.fixture(scope="module")
def dataset(s3: Any, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    root = make_synthetic(tmp_path_factory.mktemp("d") / "tiny", 8, size=40, seed=11)
    return upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}tiny/")


def _assert_watched(watched: subprocess.CompletedProcess, run_id: str, backbones: list[str]) -> None:
    """The watch exited 0 with the run; each backbone's line went through stages to done/collapsed with a test F1."""
    assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-3000:]
    for b in backbones:
        lines = backbone_lines(watched.stdout, b)
        assert lines, watched.stdout
        assert re.search(r"(✓ done|⚠ collapsed) +test F1 \d\.\d{3} accuracy \d\.\d{3} in ", lines[-1]), lines
    counts = re.findall(r", \d+/(\d+) backbones finished", watched.stdout)  # n: the run's backbones from the start
    assert counts and set(counts) == {str(len(backbones))}, watched.stdout
    stages = {ln.split()[1] for b in backbones for ln in backbone_lines(watched.stdout, b)}
    assert stages & {"manifest", "features", "head", "evaluate", "upload"}, watched.stdout  # seen while running
    table = watched.stdout.split("\n\n", 1)[1]
    assert re.search(r"backbone +status +test F1 +accuracy +AUC +val F1 +seconds +weights", table), table
    assert f"/runs/flow-run/{run_id}" in watched.stdout


def _assert_summary_first(flow_run_id: Any) -> None:
    """The run's only flow-level artifact is its summary, so the UI lists it above every task artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    flow_level = [a for a in arts if a.task_run_id is None and a.type != "result"]
    assert [a.key for a in flow_level] == ["run-summary"], [(a.key, a.type) for a in arts]
    text = str(flow_level[0].data)
    assert "**Status: ✓ completed**" in text and "Promotion:" in text and "| backbone | status | test F1 |" in text
    table = next(a for a in arts if a.key == "backbone-comparison")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert list(rows[0])[:8] == ["backbone", "status", "test F1", "accuracy", "AUC", "val F1", "seconds", "weights"]
    assert all(re.fullmatch(r"\d\.\d{3}", r["test F1"]) for r in rows if r["status"] != "✗ failed"), rows


def test_train_all_local_uploads_checked_artifacts(dataset: str, s3: Any, env: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    from flows.train_all import train_all

    monkeypatch.setenv("SCENE_EXPORT", "openvino")  # what users get: the backbone processes export their models
    state, run_id, watched = run_watched(  # `scene runs watch` follows the run from another process meanwhile
        lambda: train_all(data=dataset, params=_params(backbones=["mobilenetv2", "efficientnetb0"]), return_state=True))
    assert state.is_completed(), state.message
    _assert_watched(watched, run_id, ["mobilenetv2", "efficientnetb0"])
    _assert_summary_first(state.state_details.flow_run_id)
    out = state.result()
    assert {r["backbone"] for r in out["results"]} == {"mobilenetv2", "efficientnetb0"}
    promotion = out["promotion"]  # random-init models on generated data: registered and flagged, never promoted
    assert promotion["promoted"] is False, promotion
    if "decision" in promotion:  # a usable challenger reached the gate, which refused it for what it is
        assert "random initialisation" in promotion["decision"]["reason"], promotion
        assert "generated (synthetic) data" in promotion["decision"]["reason"], promotion
    else:
        assert promotion["reason"] == "no usable challenger", promotion
    for r in out["results"]:  # whichever way the gate went: the registry records both flags it refuses on
        record = registry.get_version(s3, env["SCENE_ARTIFACT_BUCKET"], r["version"]["version"])
        assert record["random_init"] is True and record["synthetic_data"] is True, record
    prefix = out["prefix"]
    for b in ("mobilenetv2", "efficientnetb0"):
        listed = json.loads(storage.read_bytes(f"{prefix}{b}/checksums.json", s3))
        names = {u["uri"].rsplit("/", 1)[-1] for u in listed}
        assert {"model.keras", "metrics.json", "history.csv", "report.html", "model_card.md",
                "confusion_matrix.png", "roc.png", "learning_curves.png", "config.json"} <= names
        for u in listed:  # every uploaded object has the recorded checksum
            assert storage.sha256_bytes(storage.read_bytes(u["uri"], s3)) == u["sha256"], u["uri"]
        version = next(r["version"] for r in out["results"] if r["backbone"] == b)  # registered from the run's folder
        registered = json.loads(storage.read_bytes(version["uri"] + "checksums.json", s3))
        run_files = {u["uri"].rsplit(f"/{b}/", 1)[-1]: u["sha256"] for u in listed}
        for u in registered:
            rel = u["uri"].removeprefix(version["uri"])
            assert rel == "test_predictions.csv" or run_files.get(rel) == u["sha256"], (rel, u["sha256"])
        if b == "mobilenetv2":  # the exported OpenVINO model travels with the version, under its checksums
            exported = {"openvino/model.xml", "openvino/model.bin", "openvino/export.json"}
            assert exported <= {u["uri"].removeprefix(version["uri"]) for u in registered}, registered
            assert storage.sha256_bytes(storage.read_bytes(u["uri"], s3)) == u["sha256"], u["uri"]
    for name in ("manifest.csv", "validation.json", "comparison.md", "comparison.csv"):
        assert storage.exists(prefix + name, s3), name
    manifest = pd.read_csv(io.BytesIO(storage.read_bytes(prefix + "manifest.csv", s3)), keep_default_na=False)
    assert (manifest["pack"] != "").all()  # the images read from s3:// were packed while the manifest was built
    assert all(storage.exists(p, s3) for p in set(manifest["pack"]))
    assert "random init — not a transfer-learning result" in storage.read_bytes(prefix + "comparison.md", s3).decode()
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    kinds = {a.key: a.type for a in arts}
    assert kinds.get("backbone-comparison") == "table" and kinds.get("training-report") == "markdown", kinds
    assert kinds.get("data-validation") == "markdown", kinds
    # local children get the published manifest by URI, as dispatched ones do: no manifest object in parameters
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
    trained = [c for c in children if c.parameters.get("backbone")]
    assert sorted(c.parameters["backbone"] for c in trained) == ["efficientnetb0", "mobilenetv2"], children
    for child in trained:
        assert child.parameters["manifest_uri"] == prefix + "manifest.csv" and "manifest" not in child.parameters
        assert len(json.dumps(child.parameters, default=str)) < 2000, child.parameters
    about = json.loads(storage.read_bytes(prefix + "dataset.json", s3))
    assert (about["data"], about["test"], about["fingerprint"]) == (dataset, None, out["data_fingerprint"])
    for r in out["results"]:  # each version registers under the data root the manifest names
        assert r["version"]["dataset"] == dataset.rstrip("/") + "/", r["version"]
    # a rerun on unchanged data computes no feature again, and writes into a work folder of its own
    again = train_all(data=dataset, params=_params(backbones=["mobilenetv2"]), return_state=True)
    assert again.is_completed()
    features = again.result()["results"][0]
    assert features["features_computed"] == 0 and features["features_cached"] > 0
    first = next(r for r in out["results"] if r["backbone"] == "mobilenetv2")
    assert Path(features["out_dir"]) != Path(first["out_dir"])
    for r in (first, features):  # <work>/<flow run id>/<backbone>: each run's files stay its own
        run_id = Path(r["out_dir"]).parent.name
        assert (Path(r["out_dir"]) / "model.keras").is_file() and len(run_id) == 36, r["out_dir"]


def test_validation_failure_stops_the_run(s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    from flows.train_all import train_all

    root = make_synthetic(tmp_path / "one", 4, size=40, seed=2, classes=("sea",))
    data = upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}one-class/")
    state = train_all(data=data, params=_params(backbones=["mobilenetv2"]), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="failed validation") as err:
        state.result()
    assert "classes_present" in str(err.value) or "class_minimum" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"params": {"backbones": ["alexnet"]}}, "not in the registry"),
        ({"params": {"backbones": ["mobilenetv2"], "views": -1}}, "views=-1 is invalid"),
        ({"params": {"backbones": []}}, "pass at least one"),
        ({"params": {"backbones": ["mobilenetv2"], "preset": "nope"}}, "unknown preset 'nope'"),
        ({"data": "s3://no-such-bucket/x/"}, "bucket 'no-such-bucket' is not the data bucket"),
        ({"data": "s3://scene-data/datasets/nothing-here/"}, "no files found"),
    ],
)
def test_bad_parameters_fail_fast_with_one_message(dataset: str, kwargs: dict, message: str) -> None:
    from flows.train_all import train_all

    state = train_all(**{"data": dataset, "params": {"backbones": ["mobilenetv2"], **FAST}, **kwargs},
                      return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=message):
        state.result()


def test_wrong_credentials_are_named(env: dict[str, str]) -> None:
    from scene.settings import Settings

    bad = storage.s3_client(Settings.from_env().replace(aws_secret_access_key="wrong"))
    with pytest.raises(storage.StorageError, match="AWS_SECRET_ACCESS_KEY"):
        list(storage.list_files(f"s3://{env['SCENE_DATA_BUCKET']}/x/", bad))


def test_gpu_path_fails_when_imagenet_weights_are_missing(dataset: str) -> None:
    from flows.train_backbone import train_backbone

    state = train_backbone(backbone="vgg16", data=dataset, params=_params(weights="imagenet"),
                           on_missing_weights="fail", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"vgg16_weights_tf_dim_ordering_tf_kernels_notop\.h5"):
        state.result()


def test_deployment_dispatch_runs_one_flow_run_per_backbone(dataset: str, env: dict[str, str], stack: Any) -> None:
    """train-all with dispatch=deployments on a process pool named 'gpu': one train-backbone run per backbone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.train_all import train_all

    # made through the API (prefect.yaml's own deploy is run by tests/events): only the deployment this test needs,
    # as others (retrain's event trigger) would react to other tests' events
    deploy_on_default_pool("train-backbone", "flows/train_backbone.py:train_backbone", "gpu", pool="gpu")
    backbones = ["mobilenetv2", "efficientnetb0"]
    state = train_all(data=dataset, params=_params(backbones=backbones, weights="none", epochs=1, views=0),
                      dispatch="deployments", deployment="train-backbone/gpu", return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert sorted(r["backbone"] for r in out["results"]) == sorted(backbones)
    assert out["failed"] == [], [r["error"] for r in out["results"]]
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
        deployed = [c for c in children if c.deployment_id is not None]
        assert len(deployed) == len(backbones) and all(c.state.is_completed() for c in deployed)
        assert {c.work_pool_name for c in deployed} == {"gpu"}


def test_weights_mirror_serves_workers_without_internet(s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    """`scene weights mirror` copies a Keras-cache file to the bucket; an empty cache then resolves from it."""
    import shutil

    from scene.model import backbones

    src = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"
    if not src.is_file():
        pytest.skip(f"offline weights not present at {src}")
    spec = backbones.get_spec("mobilenetv2")
    online = tmp_path / "with-internet"
    online.mkdir()
    shutil.copy(src, online / spec.weights_file(150))
    mirror = f"s3://{env['SCENE_ARTIFACT_BUCKET']}/weights-mirror/"
    done = backbones.mirror_weights(["mobilenetv2", "vgg16"], 150, mirror, s3, local_cache=online)
    assert done["mobilenetv2"] == mirror + spec.weights_file(150)
    assert done["vgg16"].startswith("error") and "vgg16_weights" in done["vgg16"]
    offline = tmp_path / "worker-cache"
    w = backbones.resolve_weights(spec, "imagenet", 150, s3=s3, mirror=mirror, local_cache=offline)
    assert w.origin.startswith("mirror s3://") and Path(w.path).is_file()
    assert storage.sha256_file(w.path) == storage.sha256_file(src)


def test_data_upload_skips_unchanged_files(env: dict[str, str], s3: Any, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from scene.cli.main import main

    root = make_synthetic(tmp_path / "u", 2, size=40, seed=5)
    args = ["data", "upload", str(root), "--name", "upload-test", "--ready"]
    assert main(args) == 0
    assert "(12 uploaded, 0 unchanged)" in capsys.readouterr().out
    dest = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}upload-test/"
    assert storage.exists(dest + "_READY", s3)
    s3.delete_object(Bucket=env["SCENE_DATA_BUCKET"], Key=f"{env['SCENE_DATA_PREFIX']}upload-test/_READY")
    assert main(args) == 0  # unchanged: nothing sent, so no storage events and no marker
    assert "(0 uploaded, 12 unchanged)" in capsys.readouterr().out
    assert not storage.exists(dest + "_READY", s3)


def _idle_deployment(pool: str) -> Any:
    """A train-backbone deployment on a new process pool that no worker polls (its runs stay Scheduled)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name("train-backbone")
        return client.create_deployment(flow_id=flow_id, name=pool, work_pool_name=pool, path=str(REPO),
                                        entrypoint="flows/train_backbone.py:train_backbone")


def _start_run_of(deployment_id: Any, name: str, started: dict[str, Any], timeout: float = 120.0) -> None:
    """Act as that pool's worker for one run only: execute the run called ``name`` with Prefect's engine."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            mine = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            run = next((r for r in client.read_flow_runs(deployment_filter=mine) if r.name == name), None)
            if run is not None:
                started["run"] = run.id
                started["proc"] = subprocess.Popen([sys.executable, "-m", "prefect.engine", str(run.id)], cwd=REPO,
                                                   env=dict(os.environ), stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL)
                return
            time.sleep(0.5)


def test_dispatch_reports_the_backbone_that_never_started(dataset: str, env: dict[str, str], s3: Any) -> None:
    """One dispatched run is executed, the other stays Scheduled: it becomes a failed, cancelled row naming its run."""
    import contextvars
    import threading
    import uuid

    from prefect.client.orchestration import get_client

    from flows.train_all import train_all

    pool = f"idle-{uuid.uuid4().hex[:8]}"
    deployment_id = _idle_deployment(pool)
    started: dict[str, Any] = {}
    starter = threading.Thread(target=contextvars.copy_context().run,  # the thread talks to the test's server
                               args=(_start_run_of, deployment_id, "mobilenetv2", started), daemon=True)
    starter.start()
    state = train_all(data=dataset, params=_params(backbones=["mobilenetv2", "efficientnetb0"], weights="none",
                      epochs=1, views=0), dispatch="deployments", deployment=f"train-backbone/{pool}",
                      start_timeout_s=START_S, promote=False, return_state=True)
    starter.join()
    assert started["proc"].wait(timeout=120) == 0
    assert state.is_completed(), state.message
    out = state.result()
    assert out["failed"] == ["efficientnetb0"], out["results"]
    (never,) = [r for r in out["results"] if r["backbone"] == "efficientnetb0"]
    with get_client(sync_client=True) as client:
        children = {r.name: r for r in client.read_flow_runs() if r.deployment_id == deployment_id}
    assert set(children) == {"mobilenetv2", "efficientnetb0"}
    assert children["efficientnetb0"].state.is_cancelled() and children["mobilenetv2"].state.is_completed()
    assert str(children["efficientnetb0"].id) in never["error"], never["error"]
    assert re.search(rf"never started: still (Scheduled|Late) after \d+ s \(start_timeout_s={START_S}\)",
                     never["error"])
    table = pd.read_csv(io.BytesIO(storage.read_bytes(out["prefix"] + "comparison.csv", s3)))
    assert dict(zip(table["backbone"], table["status"], strict=True))["efficientnetb0"] == "failed"
