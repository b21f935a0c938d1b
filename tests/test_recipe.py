"""A champion's recipe as a retrain's default parameters: field-level precedence, bad documents named."""

from __future__ import annotations

import pytest

from scene.train.fit import TrainConfig
from scene.train.params import TrainParams
from scene.train.recipe import RecipeError, with_recipe

CHAMPION = {"config": TrainConfig(backbone="mobilenetv2", image_size=96, views=1, mirror=True, refit=True,
                                  epochs=40, seed=3).to_dict(), "class_names": ["a", "b"]}


@pytest.mark.parametrize(("given", "expected"), [
    ({}, {"backbones": ["mobilenetv2"], "image_size": 96, "views": 1, "mirror": True, "refit": True, "epochs": 40,
          "seed": 3}),
    ({"epochs": 5}, {"image_size": 96, "mirror": True, "epochs": 5}),  # a field set explicitly wins, the rest stays
    ({"backbones": ["resnet50"], "mirror": False}, {"backbones": ["resnet50"], "mirror": False, "image_size": 96}),
    ({"preset": "best-cpu"}, {"image_size": 224, "views": 0, "mirror": True, "epochs": 100, "seed": 3}),
])
def test_the_champions_recipe_fills_every_field_not_given(given: dict, expected: dict) -> None:
    got = with_recipe(TrainParams(**given), CHAMPION)
    assert {k: getattr(got, k) for k in expected} == expected
    assert got.config(got.names()[0]).image_size == expected.get("image_size", 96)  # a valid TrainConfig


def test_without_a_champion_the_params_are_used_as_given() -> None:
    assert with_recipe(TrainParams(epochs=7), None) == TrainParams(epochs=7)
    assert with_recipe(TrainParams(preset="best-cpu"), None).image_size == 224


@pytest.mark.parametrize(("doc", "fragment"), [
    ({"class_names": ["a"]}, "no 'config' with a 'backbone'"),
    ({"config": {"backbone": "mobilenetv2", "views": -1}}, "not valid training parameters"),
])
def test_a_config_without_a_usable_recipe_is_named(doc: dict, fragment: str) -> None:
    with pytest.raises(RecipeError, match=fragment) as err:
        with_recipe(TrainParams(), doc, "s3://a/models/m/v/config.json")
    assert "s3://a/models/m/v/config.json" in str(err.value)
