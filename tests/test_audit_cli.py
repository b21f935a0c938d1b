"""``scene audit labels|duplicates|drift`` end to end on generated images (in-process, real files, tiny backbone)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scene.cli.main import main

FLAGS = ["--backbone", "mobilenetv2", "--weights", "none", "--image-size", "48"]


@pytest.fixture(scope="module")
def work(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synth set plus pixel-identical PNG copies of every forest image (new files, new hashes, same features)."""
    root = tmp_path_factory.mktemp("audit")
    data = root / "data"
    shutil.copytree(synth_dir, data)
    for f in sorted((data / "forest").glob("*.jpg")):
        Image.open(f).save(f.with_name(f.stem + "_copy.png"))
    return root


def test_duplicates_lists_the_copies_and_blocks_on_train_test_leakage(work: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "duplicates", str(work / "data"), *FLAGS, "--threshold", "0.9999",
               "--cache", str(work / "cache"), "--out", str(work / "dup")])
    pairs = pd.read_csv(work / "dup" / "near_duplicates.csv")
    copies = pairs[pairs["key_b"].str.endswith("_copy.png") | pairs["key_a"].str.endswith("_copy.png")]
    assert len(copies) == 12 and len(pairs) == 12  # every planted copy, nothing else at cosine ≥ 0.9999
    assert (pairs["kind"] == "leak").any()
    err = capsys.readouterr().err
    assert rc == 1 and "leakage between train and test" in err


def test_labels_writes_the_flagged_keys_to_csv_and_stdout(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "labels", str(work / "data"), *FLAGS, "--folds", "3",
               "--cache", str(work / "cache"), "--out", str(work / "lab")])
    assert rc == 0
    issues = pd.read_csv(work / "lab" / "label_issues.csv")
    assert list(issues.columns) == ["rank", "key", "split", "label", "suggested", "quality", "p_label", "p_suggested"]
    page = (work / "lab" / "label_issues.html").read_text()
    assert page.count("<figure") == min(len(issues), 48) and "data:image/jpeg;base64," in page
    out = capsys.readouterr()
    assert len([line for line in out.out.splitlines() if line]) == len(issues)
    assert f"{len(issues)} of 84 images look mislabelled" in out.err


def test_drift_flags_night_darkened_images(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    night = work / "night"
    night.mkdir()
    for f in sorted((work / "data").rglob("*.jpg"))[::2]:
        px = np.asarray(Image.open(f).convert("RGB"), np.float32) * 0.25
        Image.fromarray(px.astype(np.uint8)).save(night / f"{f.parent.name}_{f.name}")
    rc = main(["audit", "drift", str(work / "data"), str(night), *FLAGS, "--fail-on-drift",
               "--cache", str(work / "cache"), "--out", str(work / "drift")])
    result = json.loads((work / "drift" / "drift.json").read_text())
    assert result["drifted"] and result["images"] == 36 and rc == 1
    assert "DRIFT" in capsys.readouterr().out
