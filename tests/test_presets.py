"""Named recipes: a preset fills what the user left at its default, never what the user set."""

from __future__ import annotations

import pytest

from scene.presets import PRESETS, apply_preset, get_preset

DEFAULTS = {"backbones": ["resnet50"], "views": 2, "epochs": 100, "image_size": 150, "mirror": False}


def test_preset_fills_defaults_but_not_what_the_user_set() -> None:
    given = {**DEFAULTS, "epochs": 7}
    out = apply_preset("best-cpu", given, DEFAULTS)
    best = PRESETS["best-cpu"]
    assert out["epochs"] == 7  # set by the user
    assert (out["backbones"], out["image_size"], out["mirror"], out["views"]) == (
        best["backbones"], best["image_size"], best["mirror"], best["views"])
    assert apply_preset(None, given, DEFAULTS) == given


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown preset 'fastest'; known presets: best-cpu"):
        get_preset("fastest")


def test_every_preset_builds_a_valid_config() -> None:
    from scene.train import TrainConfig

    for name, preset in PRESETS.items():
        cfg = {k: v for k, v in preset.items() if k != "backbones"}
        for b in preset["backbones"]:
            TrainConfig(backbone=b, **cfg)  # raises on a bad value
        assert name


def test_flows_resolve_a_preset_like_the_cli() -> None:
    from flows.steps import DEFAULT_BACKBONES, preset_values

    v = preset_values("best-cpu", backbones=DEFAULT_BACKBONES, views=2, epochs=100, image_size=150, mirror=False)
    assert v["backbones"] == ["mobilenetv2"] and v["image_size"] == PRESETS["best-cpu"]["image_size"]
    v = preset_values("best-cpu", backbones=None, views=2, epochs=100, image_size=160, mirror=False)  # retrain
    assert v["backbones"] == ["mobilenetv2"] and v["image_size"] == 160


def test_cli_rejects_an_unknown_preset(tmp_path, capsys) -> None:
    from scene.cli import main

    assert main(["train", "--data", str(tmp_path), "--preset", "nope", "--out", str(tmp_path / "o")]) != 0
    assert "--preset: unknown preset 'nope'" in capsys.readouterr().err
