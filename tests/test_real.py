"""Real photos (``../shared/data/intel``) and real ImageNet weights: transfer learning really works here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scene.data.dataset import Dataset, build_dataset, fingerprint
from scene.train.stages import train_one

pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def subset(intel_dir: Path) -> Dataset:
    """80 photos per class (480), splits as the full data set assigns them."""
    full = build_dataset(str(intel_dir))
    rows = full.manifest.groupby("label").head(80).reset_index(drop=True)
    return Dataset(rows, full.rejected, full.class_names, full.source, None, fingerprint(rows))


def test_pretrained_backbone_beats_random_init_by_far(subset: Dataset, mobilenet_weights: Path,
                                                      tmp_path: Path) -> None:
    from scene.train.fit import TrainConfig

    common = {"backbone": "mobilenetv2", "image_size": 96, "views": 1, "epochs": 60}
    pre = train_one(subset, TrainConfig(weights=str(mobilenet_weights), **common), tmp_path / "pre",
                    cache_root=str(tmp_path / "cache"), bootstrap=200)
    rnd = train_one(subset, TrainConfig(weights="none", **common), tmp_path / "rnd",
                    cache_root=str(tmp_path / "cache"), bootstrap=200)
    f1_pre, f1_rnd = pre.metrics["test"]["f1_weighted"], rnd.metrics["test"]["f1_weighted"]
    assert pre.status == "ok" and f1_pre >= 0.75, pre.metrics["test"]
    assert f1_pre - f1_rnd >= 0.2, (f1_pre, f1_rnd)


def test_cli_train_then_evaluate_on_real_photos(intel_dir: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    import shutil

    from scene.cli.main import main

    small = tmp_path / "intel"
    for cls in sorted(p.name for p in intel_dir.iterdir()):
        (small / cls).mkdir(parents=True)
        for f in sorted((intel_dir / cls).iterdir())[:40]:
            shutil.copy(f, small / cls / f.name)
    assert main(["train", "--data", str(small), "--backbone", "mobilenetv2", "--weights", str(mobilenet_weights),
                 "--image-size", "96", "--views", "1", "--cache", str(tmp_path / "c"), "--out",
                 str(tmp_path / "run")]) == 0
    held_out = tmp_path / "held-out"
    for cls in sorted(p.name for p in intel_dir.iterdir()):
        (held_out / cls).mkdir(parents=True)
        for f in sorted((intel_dir / cls).iterdir())[-20:]:
            shutil.copy(f, held_out / cls / f.name)
    assert main(["evaluate", "--model", str(tmp_path / "run" / "mobilenetv2" / "model.keras"), "--data",
                 str(held_out), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]
    assert metrics["n"] == 120 and metrics["f1_weighted"] >= 0.7 and not metrics["collapsed"]
