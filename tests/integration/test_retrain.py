"""The retrain flow against the real stack: registry versions, the promotion gate, incremental features."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from scene import registry, storage
from scene.synth import make_synthetic
from tests.integration.helpers import upload

pytestmark = pytest.mark.integration
WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"


@pytest.fixture(scope="module")
def weights() -> str:
    if not WEIGHTS.is_file():
        pytest.skip(f"offline MobileNetV2 weights not present at {WEIGHTS}")
    return str(WEIGHTS)


def test_retrain_promotes_then_gates_and_reuses_features(s3: Any, env: dict[str, str], weights: str,
                                                         tmp_path: Path) -> None:
    from flows.retrain import retrain

    root = make_synthetic(tmp_path / "d", 14, size=64, seed=21)
    data = upload(s3, root, f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}retrain/")
    common = {"data": data, "backbones": ["mobilenetv2"], "weights": weights, "epochs": 20, "views": 1,
              "image_size": 64}
    first = retrain(**common)
    assert first["promoted"] is True, first
    champ = registry.champion(s3, env["SCENE_ARTIFACT_BUCKET"])
    assert champ["version"] == first["challenger"]
    for name in ("manifest.csv", "test_predictions.csv", "model.keras"):
        assert storage.exists(champ["uri"] + name, s3), name
    assert "## Promotion decision" in storage.read_bytes(champ["uri"] + "model_card.md", s3).decode()

    unchanged = retrain(**common, only_if_changed=True)  # the weekly schedule: nothing new, nothing to do
    assert unchanged.get("skipped") == "data unchanged"

    extra = make_synthetic(tmp_path / "more", 2, size=64, seed=99)  # ~14% new images
    for c in extra.iterdir():
        for f in c.iterdir():
            shutil.copy(f, root / c.name / f"new_{f.name}")
    upload(s3, root, data)
    second = retrain(**common, only_if_changed=True)
    assert "decision" in second, second
    res = second["results"][0]
    n_new = 12  # 2 per class; train images need 2 views, others 1
    assert 0 < res["features_computed"] <= 2 * n_new < res["features_cached"], res
    if not second["promoted"]:  # same data distribution: usually not significantly better
        assert registry.champion(s3, env["SCENE_ARTIFACT_BUCKET"])["version"] == first["challenger"]
    versions = registry.list_versions(s3, env["SCENE_ARTIFACT_BUCKET"], "mobilenetv2")
    assert {first["challenger"], second["challenger"]} <= {v["version"] for v in versions}
