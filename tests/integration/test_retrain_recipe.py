"""A retrain trains its champion's recipe on its champion's test root; a champion with other classes is refused.

Real stack. The champion of a dataset root is trained with a separate test folder (a sibling prefix), 96 px,
``mirror``, ``refit``, no augmented views and 30 epochs — a recipe far from the ``TrainParams`` defaults (150 px,
views 2, no mirror, no refit, 100 epochs). New photos then arrive and the dataset is retrained with no parameters,
as the event trigger does: its ``config.json`` must hold the champion's recipe and its ``test_predictions.csv`` rows
must be exactly the test folder's images (not a split drawn from the new photos). Then a train-all of the same data
with the classes in another order is gated against that champion: the gate refuses, naming both class lists.

The backbone is :func:`tests.integration.helpers.calibrated_mobilenetv2` (a weights *file*, not random-init) and
the photos :func:`tests.integration.helpers.draw_hues` (one hue per class, no synthetic mark), so the first model
is promoted by the gate itself.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import pandas as pd
import pytest

from scene import registry
from scene.data import storage
from scene.metadata import CLASS_NAMES
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.s3io import read_json, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SIZE = 96
RECIPE = {"image_size": SIZE, "mirror": True, "refit": True, "views": 0, "epochs": 30}


@pytest.fixture(scope="module")
def champion(s3: Any, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A dataset root and its test folder, and the first model of that root (promoted: no champion yet)."""
    from flows.retrain import retrain

    tmp = tmp_path_factory.mktemp("recipe")
    weights = calibrated_mobilenetv2(tmp, SIZE)
    base = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}recipe-{uuid.uuid4().hex[:8]}"
    data, test = f"{base}/", f"{base}-test/"
    upload(s3, draw_hues(tmp / "pool", 0, size=SIZE, per_class=8, seed=1), data)
    upload(s3, draw_hues(tmp / "test", 0, size=SIZE, per_class=3, seed=2), test)
    first = retrain(data=data, test=test, params={"backbones": ["mobilenetv2"], "weights": weights, **RECIPE})
    assert first["promoted"] is True and first["decision"]["reason"] == "no champion yet", first
    doc = registry.champion(s3, env["SCENE_ARTIFACT_BUCKET"], dataset=data)
    assert (doc["version"], doc["test"]) == (first["challenger"], test)
    return {"data": data, "test": test, "weights": weights, "version": first["challenger"], "tmp": tmp}


def _test_keys(s3: Any, test: str) -> set[str]:
    return {uri for uri, _ in storage.list_files(test, s3) if uri.endswith(".jpg")}


def test_retrain_trains_the_champions_recipe_on_its_test_folder(s3: Any, env: dict[str, str],
                                                                 champion: dict[str, Any]) -> None:
    from flows.retrain import retrain

    new = draw_hues(champion["tmp"] / "new", 0, size=SIZE, per_class=2, seed=3)
    for p in sorted(new.rglob("*.jpg")):  # new photos arrive under new names
        storage.upload_file(p, f"{champion['data']}{p.parent.name}/new_{p.name}", s3)
    result = retrain(data=champion["data"])  # as the event trigger starts it: no params, no test
    assert result["champion"] == champion["version"] and result.get("challenger"), result
    version = registry.ModelVersion.from_dict(registry.get_version(s3, env["SCENE_ARTIFACT_BUCKET"],
                                                                   result["challenger"]))
    config = read_json(s3, version.uri + "config.json")
    want = {"backbone": "mobilenetv2", "weights": champion["weights"], **RECIPE}
    assert {k: config["config"][k] for k in want} == want  # the champion's recipe, not the TrainParams defaults
    assert config["test_source"] == champion["test"] and version.test == champion["test"]
    rows = pd.read_csv(io.BytesIO(storage.read_bytes(version.uri + "test_predictions.csv", s3)))
    assert set(rows["key"]) == _test_keys(s3, champion["test"]) and len(rows) == 6 * 3  # the test folder's rows
    decision = result["decision"]
    assert decision["champion"] == champion["version"] and decision["n_paired"] == 6 * 3
    assert decision["gate_number"] == 1 and decision["alpha_level"] == pytest.approx(registry.spent_alpha(0.05, 1))


def test_a_champion_with_other_classes_is_refused_naming_both_lists(s3: Any, env: dict[str, str],
                                                                   champion: dict[str, Any]) -> None:
    from flows.train_all import train_all

    current = registry.champion(s3, env["SCENE_ARTIFACT_BUCKET"], dataset=champion["data"])
    served = registry.gates_served(s3, env["SCENE_ARTIFACT_BUCKET"], champion["data"])
    other = list(reversed(CLASS_NAMES))
    result = train_all(data=champion["data"], test=champion["test"], classes=other,
                       params={"backbones": ["mobilenetv2"], "weights": champion["weights"], **RECIPE, "epochs": 10})
    decision = result["promotion"]["decision"]
    assert result["promotion"]["promoted"] is False and decision["champion"] == current["version"]
    assert str(other) in decision["reason"] and str(list(CLASS_NAMES)) in decision["reason"], decision["reason"]
    assert decision["n_paired"] == 0 and decision["gate_number"] is None  # not compared, and no level spent
    assert registry.gates_served(s3, env["SCENE_ARTIFACT_BUCKET"], champion["data"]) == served
    after = registry.champion(s3, env["SCENE_ARTIFACT_BUCKET"], dataset=champion["data"])
    assert after["version"] == current["version"]
