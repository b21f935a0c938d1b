"""Helpers shared by the integration tests."""

from __future__ import annotations

import colorsys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from scene.data import storage
from scene.metadata import CLASS_NAMES

REPO = Path(__file__).resolve().parents[2]


def deploy_on_default_pool(flow_name: str, entrypoint: str, name: str, *, pool: str = "default",
                           job_variables: dict[str, Any] | None = None) -> str:
    """A deployment of ``flow_name`` on ``pool`` (default: the `default` pool) whose runs start in this checkout (the
    session stack's process workers run them); returns ``"<flow>/<name>"`` for ``run_deployment``."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_deployment(flow_id=client.create_flow_from_name(flow_name), name=name, work_pool_name=pool,
                                 entrypoint=entrypoint, job_variables=job_variables or {}, pull_steps=[
                                     {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}])
    return f"{flow_name}/{name}"


def wait_final(run_ids: list[Any], timeout: float) -> dict[Any, Any]:
    """Each flow run once its state is final (polled every 0.5 s); fails naming the runs still not final."""
    from prefect.client.orchestration import get_client

    deadline, done, last = time.monotonic() + timeout, {}, {}
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and len(done) < len(run_ids):
            for run_id in (r for r in run_ids if r not in done):
                run = last[run_id] = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    done[run_id] = run
            time.sleep(0.5)
    missing = {r: last[r].state for r in run_ids if r not in done}
    assert not missing, f"flow runs not final after {timeout:.0f} s: {missing}"
    return done


def upload(s3: Any, root: Path, dest: str) -> str:
    """Upload every JPEG under ``root`` to the ``dest`` prefix, keeping the folder layout."""
    for p in sorted(root.rglob("*.jpg")):
        storage.upload_file(p, dest + p.relative_to(root).as_posix(), s3)
    return dest


def calibrated_mobilenetv2(folder: Path, size: int, seed: int = 7) -> str:
    """A MobileNetV2 notop weights file: seeded random kernels, BatchNorm statistics set from flat colour images.

    Passed as ``params.weights`` (a weights *file*, so the model is not random-init and the gate may promote it);
    its features of the :func:`draw_hues` images are not degenerate.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3),
                                           pooling="avg")
    rng = np.random.default_rng(seed)
    x = np.clip(rng.uniform(0, 255, (64, 1, 1, 3)) + rng.normal(0, 12, (64, size, size, 3)), 0, 255) / 127.5 - 1
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:  # one training-mode pass with momentum 0 sets moving stats to this batch's statistics
        layer.momentum = 0.0
    model(x.astype("float32"), training=True)
    path = folder / "mobilenetv2-calibrated.weights.h5"
    model.save_weights(path)
    return str(path)


def draw_hues(out: Path, shift: int, *, size: int, per_class: int, seed: int = 5) -> Path:
    """``out/<class>/hue<c>_<i>.jpg``: hue c (of 6) is filed under class ``(c + shift) % 6``.

    Drawn here (one hue per class, faint noise), not by :mod:`scene.data.synth`, so the images carry no synthetic
    mark and the gate's synthetic-data rule does not apply.
    """
    rng = np.random.default_rng(seed)
    for c in range(len(CLASS_NAMES)):
        rgb = np.array(colorsys.hsv_to_rgb(c / len(CLASS_NAMES), 0.85, 0.9)) * 255
        folder = out / CLASS_NAMES[(c + shift) % len(CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(rgb + rng.normal(0, 3, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"hue{c}_{i:02d}.jpg", quality=95)
    return out


def assert_gated_against(s3: Any, challenger: Any, champion: Any, data: str) -> dict[str, Any]:
    """The challenger's stored ``decision.json``, checked against its champion: same dataset, and b, c, n_paired and
    the one-sided exact McNemar p recomputed here from both versions' stored ``test_predictions.csv``."""
    import io
    import json

    import pandas as pd
    import pytest
    from scipy.stats import binomtest

    stored = json.loads(storage.read_bytes(challenger.uri + "decision.json", s3))
    assert stored["champion"] == champion.version and stored["dataset"] == data
    mine, theirs = (pd.read_csv(io.BytesIO(storage.read_bytes(v.uri + "test_predictions.csv", s3)))
                    for v in (challenger, champion))
    paired = mine.merge(theirs, on="sha256", suffixes=("", "_champion"))
    assert len(paired) == len(mine) == len(theirs) > 0  # same data, same test split
    new_ok, old_ok = paired["correct"].to_numpy(bool), paired["correct_champion"].to_numpy(bool)
    b, c = int(np.sum(new_ok & ~old_ok)), int(np.sum(~new_ok & old_ok))
    assert (stored["b"], stored["c"], stored["n_paired"]) == (b, c, len(paired))
    p = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    assert stored["p_value"] == pytest.approx(p)
    return stored
