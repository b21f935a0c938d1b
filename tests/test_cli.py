"""The ``scene`` command line, end to end on generated images (in-process, real files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from scene.cli.main import main
from scene.metadata import CLASS_NAMES

TRAIN = ["--weights", "none", "--image-size", "48", "--epochs", "2", "--views", "1"]


@pytest.fixture(scope="module")
def trained(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", str(synth_dir), "--backbones", "mobilenetv2,efficientnetb0",
               *TRAIN, "--cache", str(out / "cache"), "--out", str(out)])
    assert rc == 0
    return out


def test_train_writes_models_and_comparison(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for b in ("mobilenetv2", "efficientnetb0"):
        assert (trained / b / "model.keras").exists() and (trained / b / "report.html").exists()
    table = pd.read_csv(trained / "comparison.csv")
    assert set(table["backbone"]) == {"mobilenetv2", "efficientnetb0"}
    assert "random init" in (trained / "comparison.md").read_text()


def test_evaluate_writes_test_metrics(trained: Path, synth_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", str(trained / "mobilenetv2" / "model.keras"), str(synth_dir), "--out", str(tmp_path),
               "--json"])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"test", "meta"} and metrics["test"]["n"] == 72
    assert {"accuracy", "f1_weighted", "auc_ovr_weighted", "collapsed"} <= set(metrics["test"])
    assert json.loads(capsys.readouterr().out)["test"] == metrics["test"]  # --json: the same metrics on stdout


def test_predict_writes_probabilities_and_lists_unreadable(trained: Path, synth_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for f in list((synth_dir / "sea").iterdir())[:3]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "predictions.csv"
    capsys.readouterr()
    assert main(["predict", str(folder), "--model", str(trained / "mobilenetv2" / "model.keras"),
                 "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["predicted"], doc["unreadable"], len(doc["predictions"])) == (3, 1, 4)
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns[:3]) == ["key", "label", "confidence"]
    assert [f"p_{c}" for c in CLASS_NAMES] == [c for c in df.columns if c.startswith("p_")]
    ok = df[df["error"] == ""]
    assert len(ok) == 3 and ok[[f"p_{c}" for c in CLASS_NAMES]].astype(float).sum(axis=1).round(4).eq(1).all()
    assert "not a readable image" in df[df["key"].str.endswith("broken.jpg")]["error"].iloc[0]


def test_synth_command(tmp_path: Path) -> None:
    assert main(["data", "synth", str(tmp_path / "d"), "--per-class", "2", "--test-per-class", "1"]) == 0
    assert len(list((tmp_path / "d" / "seg_test").rglob("*.jpg"))) == 6


def test_single_class_stops_before_training(tmp_path: Path, synth_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(synth_dir / "sea", tmp_path / "d" / "sea")
    rc = main(["train", str(tmp_path / "d"), "--backbones", "mobilenetv2", *TRAIN, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "failed validation" in err and "nothing was trained" in err
    assert not (tmp_path / "o" / "mobilenetv2").exists()


def test_unknown_backbone_is_a_clear_error(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", str(synth_dir), "--backbones", "alexnet", "--out", str(tmp_path)])
    assert rc == 1 and "not in the registry" in capsys.readouterr().err


def test_offline_imagenet_fails_with_instructions(synth_dir: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["train", str(synth_dir), "--backbones", "vgg16", "--weights", "imagenet", "--image-size",
               "48", "--out", str(tmp_path), "--cache", str(tmp_path / "c"), "--json"])
    err = capsys.readouterr()
    assert rc == 1, err
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in err.err.splitlines()[-1]  # the error: line
    rows = json.loads(err.out)["results"]  # the CLI keeps the failed backbone's row (--json: on stdout)
    assert [(r["backbone"], r["status"]) for r in rows] == [("vgg16", "failed")]
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in rows[0]["error"]
