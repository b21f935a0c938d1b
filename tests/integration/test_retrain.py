"""The retrain flow end to end on the real stack, with the promotion gate's outcome known in advance.

Runs without ``../shared``: the backbone weights are made by tests/integration/helpers.py — a seeded random
MobileNetV2 whose BatchNorm statistics are calibrated on flat colour images, so its features are not degenerate —
and passed as a weights *file* (kind "file", so not random-init). The images are drawn there too (one hue per
class, faint noise), not by :mod:`scene.data.synth`, so they carry no synthetic mark and the gate's synthetic-data
rule does not apply.

1. The dataset is uploaded with every hue in the *next* class's folder. The model learns that shifted mapping,
   scores well on its own (shifted) test split and, the dataset having no champion, is promoted.
2. The same dataset root is uploaded again with the right folders. Scored on the current test split, the
   champion is wrong on (nearly) every image and the new model right on (nearly) every one: the one-sided
   McNemar test and the per-class rule both say promote. This retrain reads its new images and extracts its
   features in two chunks each (``extract_chunks=2``: two ``read-chunk`` and two ``extract-chunk`` runs on the
   stack's process pool) before the backbone trains.

``decision.json``'s b, c, n_paired, p-value, per-class table and outcome are compared with values recomputed
here with numpy from the challenger's stored ``test_predictions.csv`` and the champion's ``model.keras`` run on
the same images (cross-checked against the champion's own stored predictions).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from scene import registry
from scene.data import storage
from scene.metadata import CLASS_NAMES
from tests.support.hues import calibrated_mobilenetv2, draw_hues
from tests.support.runs import child_runs, deploy_on_default_pool
from tests.support.s3io import read_csv, upload

pytestmark = pytest.mark.integration
SIZE = 64
PER_CLASS = 16


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A calibrated random MobileNetV2 weights file (see :func:`tests.integration.helpers.calibrated_mobilenetv2`)."""
    return calibrated_mobilenetv2(tmp_path_factory.mktemp("weights"), SIZE)


def _draw(out: Path, shift: int) -> Path:
    return draw_hues(out, shift, size=SIZE, per_class=PER_CLASS)


def _replace(s3: Any, root: Path, data: str) -> None:
    """Make the dataset root hold exactly the images under ``root``."""
    for uri, _ in list(storage.list_files(data, s3)):
        loc = storage.parse(uri)
        s3.delete_object(Bucket=loc.bucket, Key=loc.key)
    upload(s3, root, data)


def _champion_on(s3: Any, version_uri: str, keys: list[str], tmp_path: Path) -> np.ndarray:
    """The champion's classes for ``keys``, from its model.keras run here."""
    from scene.model.network import load
    from scene.model.predict import predict

    local = storage.download_file(version_uri + "model.keras", tmp_path / "champion.keras", s3)
    model = load(str(local))
    return predict(model, pd.DataFrame({"key": keys}), int(model.input_shape[1]), s3=s3).probs.argmax(1)


def _expected(y: np.ndarray, new: np.ndarray, old: np.ndarray, margin: float = 0.03) -> dict[str, Any]:
    """b, c, n, p and the per-class table of the gate's rule, computed directly."""
    b, c = int(np.sum((new == y) & (old != y))), int(np.sum((new != y) & (old == y)))
    rows = []
    for k in sorted(set(y.tolist())):
        m = y == k
        champ, chall = float(np.mean(old[m] == k)), float(np.mean(new[m] == k))
        rows.append({"class": CLASS_NAMES[k], "n": int(m.sum()), "champion_recall": champ,
                     "challenger_recall": chall, "ok": chall - champ >= -margin})
    p = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    return {"b": b, "c": c, "n_paired": len(y), "p_value": p, "per_class": rows,
            "promote": b > c and p < 0.05 and all(r["ok"] for r in rows)}


def test_retrain_gates_a_known_better_challenger(s3: Any, env: dict[str, str], weights: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.retrain import retrain

    data = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}gate-{uuid.uuid4().hex[:8]}/"
    common = {"data": data, "params": {"backbones": ["mobilenetv2"], "weights": weights, "epochs": 60, "views": 1,
                                       "image_size": SIZE}}
    upload(s3, _draw(tmp_path / "shifted", shift=1), data)
    first = retrain(**common)
    assert first["promoted"] is True and first["decision"]["reason"] == "no champion yet", first
    old = registry.ModelVersion.from_dict(registry.get_version(s3, env["SCENE_ARTIFACT_BUCKET"], first["challenger"]))
    assert (old.dataset, old.synthetic_data, old.random_init) == (data, False, False)
    assert first["decision"]["smoke"]["ok"] is True

    _replace(s3, _draw(tmp_path / "right", shift=0), data)
    # the chunk runs write where this run reads: a cache both may use (scene.data.scope.require_feature_cache)
    monkeypatch.setenv("SCENE_FEATURE_CACHE", f"s3://{env['SCENE_ARTIFACT_BUCKET']}/features/retrain-{uuid.uuid4().hex[:8]}/")
    chunks = deploy_on_default_pool("extract-chunk", "flows/extract_chunk.py:extract_chunk",
                                    f"retrain-chunks-{uuid.uuid4().hex[:6]}")
    reads = deploy_on_default_pool("read-chunk", "flows/read_chunk.py:read_chunk",
                                   f"retrain-reads-{uuid.uuid4().hex[:6]}")
    state = retrain(**common, extract_chunks=2, extract_deployment=chunks, read_deployment=reads, return_state=True)
    assert state.is_completed(), state.message
    second = state.result()
    chunk_runs = [r for r in child_runs(state.state_details.flow_run_id) if r.deployment_id is not None]
    assert sorted(r.name for r in chunk_runs) == ["mobilenetv2 chunk 1/2", "mobilenetv2 chunk 2/2", "read chunk 1/2",
                                                  "read chunk 2/2"]
    assert all(r.state.is_completed() for r in chunk_runs), {r.name: r.state for r in chunk_runs}
    assert second["objects_read"] == 6 * PER_CLASS  # every replaced image, read by the two read-chunk runs
    (trained,) = second["results"]
    assert trained["features_computed"] == 0, trained  # the chunks (and the audit) extracted them all
    new = registry.ModelVersion.from_dict(registry.get_version(s3, env["SCENE_ARTIFACT_BUCKET"],
                                                               second["challenger"]))
    stored = json.loads(storage.read_bytes(new.uri + "decision.json", s3))
    assert stored == {**second["decision"], "decided_at": stored["decided_at"]}

    mine = read_csv(s3, new.uri + "test_predictions.csv")
    theirs = _champion_on(s3, old.uri, mine["key"].tolist(), tmp_path)
    recorded = read_csv(s3, old.uri + "test_predictions.csv").set_index("sha256")["y_pred"]
    overlap = mine["sha256"].isin(recorded.index).to_numpy()
    assert np.array_equal(theirs[overlap], recorded.loc[mine["sha256"][overlap]].to_numpy())
    want = _expected(mine["y_true"].to_numpy(), mine["y_pred"].to_numpy(), theirs)
    assert (stored["b"], stored["c"], stored["n_paired"]) == (want["b"], want["c"], want["n_paired"])
    assert stored["p_value"] == pytest.approx(want["p_value"]) and stored["champion"] == old.version
    for got, row in zip(stored["per_class"], want["per_class"], strict=True):
        assert (got["class"], got["n"], got["ok"]) == (row["class"], row["n"], row["ok"])
        assert (got["champion_recall"], got["challenger_recall"]) == pytest.approx(
            (row["champion_recall"], row["challenger_recall"]))
    assert want["promote"] is True and want["b"] >= 10 and want["c"] <= 2  # the outcome the data was built for
    assert stored["promote"] is True and stored["smoke"]["ok"] is True

    doc = registry.champion(s3, env["SCENE_ARTIFACT_BUCKET"], dataset=data)
    assert (doc["version"], doc["data"], doc["model"]) == (new.version, data, new.uri + "model.keras")
    assert [h["version"] for h in doc["history"]] == [old.version]
    listed = {e["uri"].rsplit("/", 1)[1]: e["sha256"] for e in json.loads(storage.read_bytes(new.uri +
                                                                                             "checksums.json", s3))}
    for name in registry.DECISION_FILES:
        assert listed[name] == storage.sha256_bytes(storage.read_bytes(new.uri + name, s3))
    assert "Promotion decision" not in storage.read_bytes(new.uri + "model_card.md", s3).decode()
