"""Drift tests on feature vectors with a known shift (and none) against a reference."""

from __future__ import annotations

import numpy as np
import pytest

from scene.audit.drift import Reference, compare, fit_reference

CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")


def sample(n: int, rng: np.random.Generator, centres: np.ndarray, mix: np.ndarray | None = None,
           ) -> tuple[np.ndarray, np.ndarray]:
    """Pooled-feature-like vectors from six class clusters, and their classes."""
    y = rng.choice(len(centres), n, p=mix)
    return np.abs(centres[y] + rng.normal(0, 0.6, (n, centres.shape[1]))), y


def world(seed: int) -> tuple[np.random.Generator, np.ndarray, Reference]:
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(1, 1, (len(CLASSES), 48)))
    x, y = sample(800, rng, centres)
    return rng, centres, fit_reference(x, y, CLASSES)


def test_held_back_sample_of_the_same_data_rarely_drifts() -> None:
    alarms = 0
    for seed in range(10):
        rng, centres, ref = world(seed)
        x, y = sample(300, rng, centres)
        alarms += compare(ref, x, y).drifted
    assert alarms <= 1  # false-alarm floor: ≤ 10% at alpha 0.01 (expected ~0)


def test_darkened_features_drift_in_every_trial() -> None:
    found = 0
    for seed in range(10):
        rng, centres, ref = world(seed)
        x, y = sample(300, rng, centres)
        r = compare(ref, 0.6 * x, y)  # night: every activation weaker (what darkening does to pooled features)
        found += r.drifted and any("feature" in m for m in r.reasons)
    assert found >= 9  # detection floor: ≥ 90%


def test_class_mix_shift_is_reported_with_its_table() -> None:
    rng, centres, ref = world(3)
    mix = np.array([0.5, 0.5, 0, 0, 0, 0])  # only buildings and forest arrive
    x, y = sample(300, rng, centres, mix)
    r = compare(ref, x, y)
    assert r.drifted and any("class mix" in m for m in r.reasons)
    assert r.class_mix["buildings"]["new"] > 0.4 and r.class_mix_tv > 0.5
    assert "DRIFT" in r.markdown() and r.to_dict()["drifted"] is True


def test_reference_round_trips_and_small_inputs_are_clear_errors() -> None:
    _, _, ref = world(1)
    back = Reference.from_bytes(ref.to_bytes())
    assert back.class_names == CLASSES and np.allclose(back.projected, ref.projected)
    with pytest.raises(ValueError, match="at least 2"):
        compare(ref, np.zeros((1, 48)), np.zeros(1, int))
    with pytest.raises(ValueError, match="too few"):
        fit_reference(np.zeros((5, 48)), np.zeros(5, int), CLASSES)
