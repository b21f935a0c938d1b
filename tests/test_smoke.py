"""The fresh-process load check of an exported model (scene.registry.smoke): real subprocesses, a real saved model."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scene.model.backbones import Preprocess
from scene.model.network import load
from scene.model.predict import predict
from scene.registry.smoke import check_model, pick

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A small saved model with scene's custom preprocessing layer, and its recorded predictions on 12 images."""
    root = tmp_path_factory.mktemp("smoke")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((16, 16, 3)), Preprocess("tf"), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")])
    path = root / "model.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    keys = []
    for i in range(12):
        colour = np.array([(i % 3 == c) * 200 + 20 for c in range(3)], dtype=float)
        img = np.clip(colour + rng.normal(0, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
        keys.append(str(root / f"img{i}.png"))
        Image.fromarray(img).save(keys[-1])
    rows = pd.DataFrame({"key": keys, "label_index": [i % 3 for i in range(12)]})
    p = predict(load(str(path)), rows, 16)
    pred = p.probs.argmax(1)
    table = pd.DataFrame({"key": keys, "sha256": [f"{i:064x}" for i in range(12)], "y_true": rows["label_index"],
                          "y_pred": pred, "correct": pred == rows["label_index"]})
    return path, table


def test_pick_spreads_over_classes_in_a_fixed_order(exported: tuple[Path, pd.DataFrame]) -> None:
    _, table = exported
    chosen = pick(table.sample(frac=1, random_state=1), 5)
    assert chosen["y_true"].tolist() == [0, 1, 2, 0, 1]
    assert chosen["sha256"].tolist() == pick(table, 5)["sha256"].tolist()


def test_fresh_process_reproduces_the_recorded_predictions(exported: tuple[Path, pd.DataFrame]) -> None:
    path, table = exported
    result = check_model(path, table)
    assert result.ok, result.reason
    assert len(result.keys) == 8 and result.got == result.expected
    assert result.expected == pick(table)["y_pred"].tolist()


def test_a_mismatch_or_a_broken_file_refuses(exported: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    path, table = exported
    first = pick(table, 1)["sha256"].iloc[0]
    tampered = table.assign(y_pred=np.where(table["sha256"] == first, (table["y_pred"] + 1) % 3, table["y_pred"]))
    result = check_model(path, tampered, n=4)
    assert not result.ok and "predicts 1 of 4 test images differently" in result.reason
    broken = tmp_path / "model.keras"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated upload
    result = check_model(broken, table, n=2)
    assert not result.ok and "does not load and predict in a fresh process" in result.reason
    assert "exited with 1" in result.reason
