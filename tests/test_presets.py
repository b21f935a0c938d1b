"""Named recipes: a preset fills what the user left at its default, never what the user set."""

from __future__ import annotations

import pytest

from scene.train.presets import PRESETS, get_preset


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown preset 'fastest'; known presets: best-cpu, finetune-cpu"):
        get_preset("fastest")


def test_every_preset_builds_a_valid_config() -> None:
    from scene.train.fit import TrainConfig

    assert PRESETS
    for name, preset in PRESETS.items():
        cfg = {k: v for k, v in preset.items() if k != "backbones"}
        assert preset["backbones"], name
        for b in preset["backbones"]:
            built = TrainConfig(backbone=b, **cfg)  # raises on a bad value
            assert {k: getattr(built, k) for k in cfg} == cfg, (name, b)  # every setting of the preset is kept


def test_train_params_preset_fills_only_the_fields_not_set() -> None:
    """One place applies a preset for the flows and the CLI: what the caller set wins, even when it is a default."""
    from scene.train.params import TrainParams

    best = PRESETS["best-cpu"]
    p = TrainParams(preset="best-cpu", epochs=100, image_size=160).resolved()
    assert (p.backbones, p.views, p.mirror) == (best["backbones"], best["views"], best["mirror"])
    assert (p.epochs, p.image_size) == (100, 160)  # set by the caller (100 is also the default)
    assert p.resolved() == p and TrainParams.model_validate(p.model_dump()).resolved() == p  # dispatched runs
    assert TrainParams(epochs=3).resolved() == TrainParams(epochs=3)
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        TrainParams(preset="nope").resolved()


def test_cli_builds_the_same_train_params(tmp_path) -> None:
    from scene.cli.main import build_parser, train_params
    from scene.train.params import TrainParams

    args = build_parser().parse_args(["train", "d", "--out", "o", "--preset", "best-cpu", "--epochs", "7"])
    assert train_params(args) == TrainParams(preset="best-cpu", epochs=7).resolved()
    args = build_parser().parse_args(["train", "d", "--out", "o", "--backbones", "vgg16"])
    assert train_params(args) == TrainParams(backbones=["vgg16"])


def test_cli_rejects_an_unknown_preset(tmp_path, capsys) -> None:
    from scene.cli.main import main

    assert main(["train", str(tmp_path), "--preset", "nope", "--out", str(tmp_path / "o")]) != 0
    assert "--preset: unknown preset 'nope'" in capsys.readouterr().err
