"""Tests for scene.evaluate: metrics, collapse rule, bootstrap intervals, McNemar, confused pairs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from scene.evaluate import SplitMetrics, evaluate_predictions, is_collapsed, mcnemar, most_confused_pairs

NAMES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
K = len(NAMES)


def one_hot(labels: np.ndarray, k: int = K, p: float = 0.9) -> np.ndarray:
    """Probabilities putting ``p`` on the given label and the rest evenly elsewhere."""
    probs = np.full((len(labels), k), (1 - p) / (k - 1))
    probs[np.arange(len(labels)), labels] = p
    return probs


def balanced(n_per: int, k: int = K) -> np.ndarray:
    return np.repeat(np.arange(k), n_per)


def test_perfect_predictions_score_one() -> None:
    y = balanced(5)
    m = evaluate_predictions(y, one_hot(y), NAMES)
    for key in (
        "accuracy",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "auc_ovr_weighted",
        "auc_ovr_macro",
    ):
        assert getattr(m, key) == pytest.approx(1.0), key
    assert not m.collapsed and m.collapse_reason == ""
    assert m.n == 30
    assert m.confusion == np.diag([5] * K).tolist()
    assert m.per_class["glacier"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 5.0}
    assert m.pred_share["sea"] == pytest.approx(1 / 6)
    assert m.ci == {} and m.notes == ()


def test_to_dict_is_json_ready_and_round_trips() -> None:
    y = balanced(4)
    m = evaluate_predictions(y, one_hot(y), NAMES, bootstrap=50)
    d = m.to_dict()
    for key in (
        "accuracy",
        "precision_weighted",
        "recall_weighted",
        "f1_weighted",
        "f1_macro",
        "auc_ovr_weighted",
        "collapsed",
    ):
        assert key in d
    text = json.dumps(d)
    back = SplitMetrics.from_dict(json.loads(text))
    assert back == m


@pytest.mark.parametrize(
    ("y_true", "y_pred", "collapsed", "fragment"),
    [
        # all predictions one class, true share 1/6
        (balanced(10), np.full(60, 2), True, "predicts 'glacier' for 100% of images (true share 17%)"),
        # perfect on data where one class dominates: high pred share is fine when it is the true share
        (np.array([2] * 70 + [0] * 30), np.array([2] * 70 + [0] * 30), False, ""),
        # accuracy 0.2 <= 1.5/6 = 0.25
        (
            balanced(10),
            np.concatenate([balanced(10)[:12], (balanced(10)[12:] + 1) % K]),
            True,
            "accuracy 0.20 is near chance 0.17",
        ),
        # accuracy 0.5 is fine
        (balanced(10), np.concatenate([balanced(10)[:30], (balanced(10)[30:] + 1) % K]), False, ""),
        (np.array([], dtype=int), np.array([], dtype=int), True, "no predictions"),
    ],
)
def test_collapse_rule(y_true: np.ndarray, y_pred: np.ndarray, collapsed: bool, fragment: str) -> None:
    flag, reason = is_collapsed(y_true, y_pred, K, NAMES)
    assert flag is collapsed
    assert fragment in reason
    if not collapsed:
        assert reason == ""


def test_all_one_class_predictions_collapse_in_metrics() -> None:
    y = balanced(10)
    m = evaluate_predictions(y, one_hot(np.full(60, 2)), NAMES)
    assert m.collapsed
    assert "'glacier'" in m.collapse_reason and "near chance" in m.collapse_reason
    assert m.pred_share["glacier"] == 1.0
    assert m.per_class["forest"]["precision"] == 0.0  # zero_division=0, no warnings needed


def test_random_probabilities_are_near_chance() -> None:
    rng = np.random.default_rng(1)
    y = balanced(100)
    probs = rng.dirichlet(np.ones(K), size=len(y))
    m = evaluate_predictions(y, probs, NAMES)
    assert m.accuracy < 0.25
    assert m.collapsed and "near chance" in m.collapse_reason
    assert m.auc_ovr_weighted == pytest.approx(0.5, abs=0.07)


def test_auc_none_when_a_class_is_missing() -> None:
    y = np.array([0, 1, 2, 3, 4] * 4)  # no 'street'
    m = evaluate_predictions(y, one_hot(y), NAMES)
    assert m.auc_ovr_weighted is None and m.auc_ovr_macro is None
    assert any("street" in n for n in m.notes)
    assert m.accuracy == 1.0
    json.dumps(m.to_dict())


def test_one_hot_labels_accepted_and_bad_shapes_rejected() -> None:
    y = balanced(3)
    assert evaluate_predictions(np.eye(K)[y], one_hot(y), NAMES).accuracy == 1.0
    with pytest.raises(ValueError):
        evaluate_predictions(y, one_hot(y)[:, :5], NAMES)
    with pytest.raises(ValueError):
        evaluate_predictions(y[:-1], one_hot(y), NAMES)


def _noisy(n_per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = balanced(n_per)
    pred = np.where(rng.random(len(y)) < 0.75, y, rng.integers(0, K, len(y)))
    return y, one_hot(pred)


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data() -> None:
    widths = []
    for n_per in (20, 300):
        y, probs = _noisy(n_per, seed=3)
        m = evaluate_predictions(y, probs, NAMES, bootstrap=400, seed=7)
        assert set(m.ci) == {"accuracy", "f1_weighted"}
        for key in m.ci:
            lo, hi = m.ci[key]
            assert lo <= getattr(m, key) <= hi, key
        widths.append(m.ci["accuracy"][1] - m.ci["accuracy"][0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_is_seeded_and_matches_sklearn_f1() -> None:
    from sklearn.metrics import f1_score

    from scene.evaluate import _bootstrap_stats

    y, probs = _noisy(10, seed=5)
    pred = probs.argmax(1)
    a = evaluate_predictions(y, probs, NAMES, bootstrap=100, seed=1).ci
    b = evaluate_predictions(y, probs, NAMES, bootstrap=100, seed=1).ci
    assert a == b
    stats = _bootstrap_stats(y, pred, K, 3, seed=2, chunk=2)
    idx = np.random.default_rng(2).integers(0, len(y), size=(2, len(y)))
    expected = f1_score(y[idx[0]], pred[idx[0]], average="weighted", zero_division=0)
    assert stats["f1_weighted"][0] == pytest.approx(expected)
    assert stats["accuracy"][1] == pytest.approx(np.mean(y[idx[1]] == pred[idx[1]]))


def test_bootstrap_is_fast() -> None:
    y, probs = _noisy(334, seed=0)  # ~2000 items
    t0 = time.perf_counter()
    evaluate_predictions(y[:2000], probs[:2000], NAMES, bootstrap=1000)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # b=5 (A right, B wrong), c=1: p = 2 * P(X<=1 | n=6, 0.5) = 2 * 7/64
        ([1, 1, 1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 1, 1, 0], (14 / 64, 5, 1)),
        ([1, 0, 1], [1, 0, 1], (1.0, 0, 0)),
        # b=0, c=3: p = 2 * (1/8) = 0.25
        ([0, 0, 0, 1], [1, 1, 1, 1], (0.25, 0, 3)),
    ],
)
def test_mcnemar_hand_computed(a: list[int], b: list[int], expected: tuple[float, int, int]) -> None:
    p, bb, cc = mcnemar(np.array(a, bool), np.array(b, bool))
    assert (bb, cc) == expected[1:]
    assert p == pytest.approx(expected[0])


def test_most_confused_pairs_ordering() -> None:
    cm = [
        [9, 1, 0],
        [4, 7, 2],
        [0, 4, 5],
    ]
    names = ["a", "b", "c"]
    assert most_confused_pairs(cm, names) == [("b", "a", 4), ("c", "b", 4), ("b", "c", 2)]
    assert most_confused_pairs(cm, names, top=10)[-1] == ("a", "b", 1)
    assert most_confused_pairs(np.diag([3, 3, 3]), names) == []
