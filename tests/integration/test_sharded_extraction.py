"""Issue 24, item 1: a backbone's feature extraction sharded over a work pool.

``train-backbone`` with ``extract_chunks=3`` publishes its manifest and starts three runs of an ``extract-chunk``
deployment on the session stack's `default` process pool (its worker runs each in a process of its own); each
extracts one chunk of whole cache partitions into one S3 feature cache. The training run then finds every vector
cached (it computes none) and trains the head. The same training unsharded, into another cache, gives the same
vectors and the same test metrics; every image is in the sharded cache exactly once.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scene.data import storage
from scene.train import features
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.runs import child_runs, deploy_on_default_pool
from tests.support.s3io import read_csv, upload

pytestmark = pytest.mark.integration
SIZE = 32
SCORES = ("accuracy", "f1_weighted", "f1_macro", "auc_ovr_macro")


def _stored(cache: str, s3: Any) -> dict[str, np.ndarray]:
    """Every ``key: vector`` of every shard under ``cache`` (one namespace), failing on a key stored twice."""
    out: dict[str, np.ndarray] = {}
    for uri, _ in storage.list_files(cache, s3 if cache.startswith("s3://") else None):
        if uri.endswith(".npz"):
            with np.load(io.BytesIO(storage.read_bytes(uri, s3 if uri.startswith("s3://") else None))) as z:
                for key, vector in zip(z["keys"].tolist(), z["features"], strict=True):
                    assert key not in out, f"{key} stored twice"
                    out[key] = vector
    return out


def test_three_chunks_extract_every_image_once_and_train_what_an_unsharded_run_trains(
        s3: Any, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.train_backbone import train_backbone

    deployment = deploy_on_default_pool("extract-chunk", "flows/extract_chunk.py:extract_chunk",
                                        f"chunks-{uuid.uuid4().hex[:6]}")
    data = upload(s3, draw_hues(tmp_path / "hues", 0, size=SIZE, per_class=8),
                  f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}sharded-{uuid.uuid4().hex[:6]}/")
    params = {"backbones": ["mobilenetv2"], "weights": calibrated_mobilenetv2(tmp_path, SIZE), "epochs": 20,
              "views": 0, "image_size": SIZE}
    sharded_cache = f"s3://{env['SCENE_ARTIFACT_BUCKET']}/features-{uuid.uuid4().hex[:8]}/"
    plain_cache = str(tmp_path / "plain-cache")

    monkeypatch.setenv("SCENE_FEATURE_CACHE", sharded_cache)
    state = train_backbone(backbone="mobilenetv2", data=data, params=params, extract_chunks=3,
                           extract_deployment=deployment, start_timeout_s=120, return_state=True)
    assert state.is_completed(), state.message
    sharded = state.result()
    chunk_runs = [r for r in child_runs(state.state_details.flow_run_id) if r.deployment_id is not None]
    assert sorted(r.name for r in chunk_runs) == [f"mobilenetv2 chunk {i}/3" for i in (1, 2, 3)]
    assert all(r.state.is_completed() for r in chunk_runs), {r.name: r.state for r in chunk_runs}

    # the manifest the chunk runs read: published under the training run's own folder
    run_id = state.state_details.flow_run_id
    manifest = read_csv(s3, f"s3://{env['SCENE_ARTIFACT_BUCKET']}/runs/{run_id}/manifest.csv")
    images = len(manifest)
    assert images == 48 and (sharded["features_computed"], sharded["features_cached"]) == (0, images)
    in_sharded = _stored(sharded_cache, s3)
    keys = sorted(in_sharded)
    assert keys == sorted(features.entry_key(s, 0) for s in manifest["sha256"])  # every image, once

    monkeypatch.setenv("SCENE_FEATURE_CACHE", plain_cache)
    state = train_backbone(backbone="mobilenetv2", data=data, params=params, return_state=True)
    assert state.is_completed(), state.message
    plain = state.result()
    assert (plain["features_computed"], plain["features_cached"]) == (images, 0)
    in_plain = _stored(plain_cache, s3)
    assert sorted(in_plain) == keys
    np.testing.assert_allclose(np.stack([in_sharded[k] for k in keys]), np.stack([in_plain[k] for k in keys]),
                               rtol=1e-5, atol=1e-6)
    for split in ("train", "val", "test"):  # the same head, trained on the same vectors
        mine, theirs = sharded["metrics"][split], plain["metrics"][split]
        assert mine["confusion"] == theirs["confusion"], split
        assert [mine[m] for m in SCORES] == pytest.approx([theirs[m] for m in SCORES], abs=1e-6), split
