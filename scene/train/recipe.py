"""A champion's recipe: the training parameters a retrain of its dataset uses by default.

Every registered version stores its resolved :class:`~scene.train.fit.TrainConfig` in ``config.json`` (``config``),
beside its ``class_names`` and data roots. A retrain trains that recipe again on the new data, so that new data
can reach a good champion: a challenger trained with the defaults (150 px, views 2, no mirror, no refit) against a
``best-cpu`` champion is significantly worse and never promoted, whatever the data says.

Precedence is **field by field**: every :class:`~scene.train.params.TrainParams` field the caller set (directly, or
through a named ``preset``) wins; every other field comes from the champion's recipe; fields neither sets keep
their defaults. So ``params={"epochs": 20}`` retrains the champion's recipe for 20 epochs, and
``params={"preset": "best-cpu"}`` retrains with that preset. Settings a ``TrainParams`` cannot carry (learning
rate, batch size, head, augmentation) are not taken over: they are the same for every run made through the flows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scene.train.params import TrainParams

# TrainConfig keys a TrainParams can carry (TrainParams.backbones ← the config's single backbone)
RECIPE_FIELDS = ("weights", "strategy", "views", "epochs", "image_size", "finetune_layers", "finetune_blocks",
                 "finetune_epochs", "finetune_lr", "finetune_warmup", "finetune_label_smoothing", "finetune_mirror",
                 "finetune_ema", "finetune_refit", "finetune_ensemble", "mixed_precision", "mirror", "refit", "seed")


class RecipeError(ValueError):
    """A champion's config.json that does not hold a usable recipe; the message names the file and the field."""


def recipe_of(config_doc: Mapping[str, Any], where: str = "config.json") -> dict[str, Any]:
    """The TrainParams fields recorded in a version's ``config.json`` document (``backbones`` included)."""
    config = config_doc.get("config")
    if not isinstance(config, Mapping) or not isinstance(config.get("backbone"), str):
        raise RecipeError(f"{where}: no 'config' with a 'backbone' (the resolved TrainConfig); re-register the "
                          "version from a folder written by scene.train.experiment, or pass params explicitly")
    return {"backbones": [config["backbone"]], **{k: config[k] for k in RECIPE_FIELDS if k in config}}


def with_recipe(params: TrainParams, config_doc: Mapping[str, Any] | None, where: str = "config.json") -> TrainParams:
    """``params`` (preset applied) with every field it does not set taken from the champion's ``config_doc``.

    ``config_doc`` None (no champion, or one without config.json): ``params`` as they are, resolved.
    """
    given = params.resolved()
    if config_doc is None:
        return given
    recipe = recipe_of(config_doc, where)
    explicit = given.model_dump(include=given.model_fields_set)
    try:
        out = TrainParams.model_validate({**recipe, **explicit})
        out.check()  # every backbone's TrainConfig: raises naming a bad value
        return out
    except ValueError as err:
        raise RecipeError(f"{where}: the champion's recipe {recipe} is not valid training parameters ({err}); pass "
                          "params explicitly") from err
