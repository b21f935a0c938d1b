"""Issue 10, scenario 7: two ``train-all`` runs and a ``retrain`` at once on the same data, on the real stack.

The three are flow runs of deployments on the session stack's ``default`` process pool, so the worker runs each
in a process of its own (and each trains its backbone in a child process: local dispatch). They share one feature
cache folder and one work folder. The data and weights are those of test_retrain (a calibrated random MobileNetV2
*file*, hue images without the synthetic mark), so the gate may promote: with no champion yet, every run's
challenger wins, and only the champion pointer's compare-and-swap decides which one becomes champion.

Checked: all three Completed with overlapping Running intervals; each run's artifacts only under its own
``runs/<flow run id>/``; each version's record names the run that registered it and its checksums.json verifies;
each comparison.csv names only its run's version; per-run work folders; only valid shards in the shared cache;
equal metrics (same data, seed, params); exactly one champion, consistent with every run's decision; and the S3
secret key in no object the runs wrote.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from scene import registry
from scene.data import storage
from scene.registry.integrity import fetch_version
from scene.train.features import FeatureCache
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.runs import deploy_on_default_pool, wait_final
from tests.support.s3io import upload

pytestmark = [pytest.mark.integration, pytest.mark.faults]
SIZE, PER_CLASS = 32, 8
FLOWS = {"train-all": "flows/train_all.py:train_all", "retrain": "flows/retrain.py:retrain"}
DEPLOYMENT = "concurrent"


@pytest.fixture(scope="module")
def deployments(env: dict[str, str]) -> dict[str, str]:
    """train-all and retrain deployments on the `default` pool (the session stack's process worker runs them)."""
    return {name: deploy_on_default_pool(name, entrypoint, DEPLOYMENT) for name, entrypoint in FLOWS.items()}


def _decision_artifact(run_id: Any) -> str:
    """The description of the run's promotion-gate artifact ("<version>: promoted" / "...: kept champion")."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=["promotion-decision"])))
    assert len(found) == 1, (run_id, found)
    return str(found[0].description)


def _scores(result: dict[str, Any]) -> dict[str, float]:
    return {f"{split}.{name}": result["metrics"][split][name] for split in ("train", "val", "test")
            for name in ("accuracy", "f1_weighted", "f1_macro")}


def _objects(s3: Any, prefix: str) -> dict[str, bytes]:
    return {uri: storage.read_bytes(uri, s3) for uri, _ in storage.list_files(prefix, s3)}


def test_two_train_all_runs_and_a_retrain_at_once_never_mix_and_leave_one_champion(
        deployments: dict[str, str], s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    from prefect.deployments import run_deployment

    bucket = env["SCENE_ARTIFACT_BUCKET"]
    data = upload(s3, draw_hues(tmp_path / "hues", 0, size=SIZE, per_class=PER_CLASS),
                  f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}concurrent-{uuid.uuid4().hex[:8]}/")
    params = {"backbones": ["mobilenetv2"], "weights": calibrated_mobilenetv2(tmp_path, SIZE), "epochs": 40,
              "views": 0, "image_size": SIZE}
    cache, work = tmp_path / "features", tmp_path / "work"
    job = {"env": {"SCENE_FEATURE_CACHE": str(cache), "SCENE_WORK_DIR": str(work)}}
    before = {e["version"] for e in registry.list_versions(s3, bucket)}
    started = [run_deployment(deployments[name], timeout=0, job_variables=job, parameters={
        "data": data, "params": params, **({"dispatch": "local"} if name == "train-all" else {})})
        for name in ("train-all", "train-all", "retrain")]
    ids = [run.id for run in started]
    runs = wait_final(ids, timeout=600.0)

    # all three Completed, and the worker ran them at the same time (overlapping Running intervals)
    assert all(runs[i].state.is_completed() for i in ids), {str(i): runs[i].state for i in ids}
    assert max(runs[i].start_time for i in ids) < min(runs[i].end_time for i in ids), \
        {str(i): (runs[i].start_time, runs[i].end_time) for i in ids}

    # outputs never mix: each run's own prefix, version, comparison.csv and work folder
    prefixes = {i: f"s3://{bucket}/runs/{i}/" for i in ids}
    results = {i: json.loads(storage.read_bytes(prefixes[i] + "mobilenetv2/result.json", s3)) for i in ids}
    versions = {i: registry.ModelVersion.from_dict(results[i]["version"]) for i in ids}
    written = {i: _objects(s3, prefixes[i]) for i in ids}
    for i in ids:
        v = versions[i]
        own = storage.sha256_bytes(storage.read_bytes(prefixes[i] + "mobilenetv2/model.keras", s3))
        assert v.version == f"mobilenetv2-{own[:12]}", (i, v.version, own)  # this run's model, whoever registered it
        others = [str(j).encode() for j in ids if j != i]
        mixed = [uri for uri, body in written[i].items() if any(o in body for o in others)]
        assert not mixed, (i, mixed)  # no object of this run names another run
        table = pd.read_csv(io.BytesIO(storage.read_bytes(prefixes[i] + "comparison.csv", s3)))
        assert table["version"].tolist() == [v.version], (i, table)
        record = registry.get_version(s3, bucket, v.version)
        assert record["run"] in {prefixes[j] + "mobilenetv2/" for j in ids if versions[j].version == v.version}
        assert record["dataset"] == data and not record["random_init"] and not record["synthetic_data"]
        fetch_version(s3, v.uri, tmp_path / "verified" / str(i))  # every file checksums.json lists, verified
        assert Path(results[i]["out_dir"]).is_relative_to(work), results[i]["out_dir"]
    out_dirs = [Path(results[i]["out_dir"]) for i in ids]
    assert len({d.parent for d in out_dirs}) == 3, out_dirs  # <work>/<flow run id>/<backbone>: one per run
    scores = {str(i): _scores(results[i]) for i in ids}
    assert all(scores[str(i)] == pytest.approx(scores[str(ids[0])], abs=1e-9) for i in ids), scores

    # the shared feature cache, written concurrently, holds only valid shards: one vector per image
    (namespace,) = [p.name for p in cache.iterdir()]
    shared = FeatureCache(str(cache), namespace)
    manifest = pd.read_csv(io.BytesIO(storage.read_bytes(prefixes[ids[0]] + "manifest.csv", s3)))
    keys = {f"{sha}:0" for sha in manifest["sha256"]}
    assert shared.missing(sorted(keys)) == [] and shared.corrupt == [], shared.corrupt
    stored = [k for shard in cache.rglob("shard-*.npz") for k in np.load(shard)["keys"].tolist()]
    assert set(stored) == keys, set(stored) ^ keys  # written by the runs' audits and extractions, all at once
    assert all(r["features_cached"] + r["features_computed"] == len(keys) for r in results.values()), results

    # exactly one champion; every run's decision is consistent with it
    doc = registry.champion(s3, bucket, dataset=data)
    assert doc is not None and doc["history"] == [], doc
    winner = doc["version"]
    said = {i: _decision_artifact(i) for i in ids}
    promoted = [i for i in ids if said[i].endswith(": promoted")]
    assert promoted and {versions[i].version for i in promoted} == {winner}, (winner, said)
    assert len(promoted) == 1 or len({v.version for v in versions.values()}) < 3, said  # one CAS won
    for i in set(ids) - set(promoted):
        decision = registry.read_decision(s3, versions[i])
        assert decision is not None and not decision.promote, (i, decision)
        assert "changed while gating" in decision.reason or decision.champion == winner, decision.reason

    # no object these runs wrote holds the S3 secret key
    secret = env["AWS_SECRET_ACCESS_KEY"].encode()
    scanned = {uri: body for i in ids for uri, body in written[i].items()}
    for v in {v.version: v for v in versions.values()}.values():
        scanned.update(_objects(s3, v.uri))
    for key in ("models/" + registry.REGISTRY, registry.champion_key(data)):
        scanned[f"s3://{bucket}/{key}"] = storage.read_bytes(f"s3://{bucket}/{key}", s3)
    assert len(scanned) > 30 and not [uri for uri, body in scanned.items() if secret in body]
    assert {e["version"] for e in registry.list_versions(s3, bucket)} - before == {v.version for v in
                                                                                   versions.values()}
