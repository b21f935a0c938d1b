"""Retraining retrains the right dataset: the schedule retrains each champion's data; an event for another
dataset root is gated only against that dataset's champion.

Real stack, with a fresh artifact bucket for this module so the registry holds only its champions. The backbone
is a seeded random MobileNetV2 whose BatchNorm statistics are calibrated on flat colour images, passed as a
weights *file* (not random-init); the images are one hue per class, drawn here (no synthetic mark), so a first
model of a dataset is promoted by the gate itself.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scene import registry
from scene.data import storage
from scene.metadata import CLASS_NAMES
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.s3io import upload

pytestmark = pytest.mark.integration
SIZE = 32
FAST = {"backbones": ["mobilenetv2"], "epochs": 30, "views": 1, "image_size": SIZE}


def _weights(folder: Path) -> str:
    """The calibrated MobileNetV2 weights this module's models start from (:func:`calibrated_mobilenetv2`)."""
    return calibrated_mobilenetv2(folder, SIZE, seed=3, batch=48)


def _draw(out: Path, per_class: int, seed: int, tag: str = "") -> Path:
    """``out/<class>/<tag><seed>_<i>.jpg``: one hue per class with faint noise (:func:`draw_hues`, unshifted)."""
    return draw_hues(out, 0, size=SIZE, per_class=per_class, seed=seed, name=f"{tag}{seed}_{{i:02d}}.jpg")


def _root(env: dict[str, str], name: str) -> str:
    return f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}{name}-{uuid.uuid4().hex[:6]}/"


def _validation(s3: Any, prefix: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(prefix + "validation.json", s3))


@pytest.fixture(scope="module")
def champion_a(s3: Any, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Dataset A's first model, promoted by the gate (no champion yet) in a registry of its own."""
    from flows.retrain import retrain

    bucket = f"reg-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    tmp = tmp_path_factory.mktemp("datasets")
    params = {"params": {**FAST, "weights": _weights(tmp)}}
    root = _draw(tmp / "a", 8, seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCENE_ARTIFACT_BUCKET", bucket)
        data = upload(s3, root, _root(env, "sched-a"))
        out = retrain(data=data, **params)
        assert out["champion"] is None and out["promoted"] is True, out  # a new dataset: nothing to gate against
        yield {"bucket": bucket, "data": data, "root": root, "version": out["challenger"], "params": params}


def test_schedule_retrains_each_champions_dataset_only_when_changed(champion_a: dict[str, Any], s3: Any,
                                                                    tmp_path: Path) -> None:
    from flows.retrain import retrain

    data, version, params = champion_a["data"], champion_a["version"], champion_a["params"]
    assert set(registry.champions(s3, champion_a["bucket"])) == {data}
    unchanged = retrain(only_if_changed=True, **params)  # what the weekly schedule passes: no data
    assert list(unchanged["datasets"]) == [data]
    assert unchanged["datasets"][data]["skipped"] == "data unchanged"
    assert unchanged["datasets"][data]["objects_read"] == 0  # every row reused from the champion's manifest

    upload(s3, _draw(champion_a["root"], 1, seed=2, tag="new"), data)  # one new image per class
    replaced = _draw(tmp_path / "replaced", 1, seed=4) / CLASS_NAMES[0]
    key = f"{data}{CLASS_NAMES[0]}/1_00.jpg"  # an image of the champion's data, overwritten under the same key
    new_bytes = next(replaced.iterdir()).read_bytes()
    storage.write_bytes(key, new_bytes, s3)
    changed = retrain(only_if_changed=True, **params)
    res = changed["datasets"][data]
    assert "skipped" not in res and res["data"] == data and res["champion"] == version, res
    assert res["objects_read"] == 7, res  # the 6 new objects and the overwritten one, nothing else
    manifest = pd.read_csv(io.BytesIO(storage.read_bytes(res["prefix"] + "manifest.csv", s3)), keep_default_na=False)
    assert len(manifest) == 6 * 9 and manifest["key"].str.startswith(data).all()
    assert manifest.set_index("key").at[key, "sha256"] == storage.sha256_bytes(new_bytes)  # no stale row
    assert _validation(s3, res["prefix"])["new_images"] == 7  # compared with A's champion's manifest
    decision = res["decision"]  # always gated: the champion's sticky test images are still there
    assert decision["champion"] == version and decision["n_paired"] > 0, decision  # against A's own champion
    assert decision["gate_number"] == 1  # the first gate this test split has served (the first model had none)


def test_event_for_another_dataset_is_gated_against_no_champion(champion_a: dict[str, Any], s3: Any,
                                                                 env: dict[str, str], tmp_path: Path) -> None:
    from flows.retrain import retrain

    bucket, a = champion_a["bucket"], champion_a["data"]
    before = registry.champion(s3, bucket, dataset=a)["version"]
    other = upload(s3, _draw(tmp_path / "b", 8, seed=3), _root(env, "sched-b"))
    out = retrain(data=other, new_objects=48, **champion_a["params"])  # what the scene.data.arrived trigger passes
    assert out["data"] == other and out["champion"] is None, out
    assert out["decision"]["champion"] is None and out["promoted"] is True, out["decision"]
    assert _validation(s3, out["prefix"])["new_images"] is None  # no previous manifest: B has no champion
    assert registry.champion(s3, bucket, dataset=other)["version"] == out["challenger"]
    assert registry.champion(s3, bucket, dataset=a)["version"] == before  # A's champion is untouched
