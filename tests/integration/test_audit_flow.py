"""The validate step of ``train-all`` runs the data audits: near-copies across train/test stop the run.

Needs the real MobileNetV2 weights in ``../shared`` (skipped without them): the audits are skipped for random-init
networks, whose features cannot tell photos apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scene.data import storage
from scene.data.dataset import SplitConfig, build_dataset, unit_hash
from scene.data.synth import make_synthetic
from tests.support.s3io import upload

pytestmark = [pytest.mark.integration, pytest.mark.real]


def _leak_copies(root: Path, n: int = 3) -> list[str]:
    """Re-encoded copies of ``n`` test-split images, each saved at a JPEG quality that puts it outside test."""
    made = []
    for key in build_dataset(str(root)).split("test")["key"].head(n):
        dest = Path(key).with_name(Path(key).stem + "_copy.jpg")
        for quality in range(95, 70, -1):
            Image.open(key).save(dest, quality=quality)
            if unit_hash(storage.sha256_bytes(dest.read_bytes()), SplitConfig().seed) >= SplitConfig().test_fraction:
                made.append(dest.name)
                break
    assert len(made) == n, made
    return made


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a.data for a in arts if a.key}


def test_train_all_stops_on_near_copies_across_train_and_test(s3: Any, env: dict[str, str], tmp_path: Path,
                                                              mobilenet_weights: Path) -> None:
    from flows.train_all import train_all

    root = make_synthetic(tmp_path / "leaky", 10, size=64, seed=21)
    copies = _leak_copies(root)
    data = upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}leaky/")
    params = {"backbones": ["mobilenetv2"], "weights": str(mobilenet_weights), "image_size": 64, "epochs": 1,
              "views": 0}
    state = train_all(data=data, params=params, promote=False, audit_labels=True, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="near-duplicate leakage"):
        state.result()
    arts = _artifacts(state.state_details.flow_run_id)
    pairs = json.loads(arts["near-duplicates"]) if isinstance(arts["near-duplicates"], str) else arts["near-duplicates"]
    leaks = {Path(p["key_a"]).name for p in pairs if p["kind"] == "leak"} | \
        {Path(p["key_b"]).name for p in pairs if p["kind"] == "leak"}
    assert set(copies) <= leaks and len([p for p in pairs if p["kind"] == "leak"]) == len(copies), pairs
    assert "label-issues" in arts and "BLOCKING" in str(arts["near-duplicates-summary"])
