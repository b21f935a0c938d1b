"""Tests for scene.evaluation.metrics: metrics, collapse rule, bootstrap intervals, McNemar, confused pairs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from scene.evaluation.metrics import SplitMetrics, evaluate_predictions, is_collapsed, mcnemar, most_confused_pairs

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


def _scored(y_true: np.ndarray, acc: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(shuffled labels, predictions right on the first ``acc`` share and shifted by one class on the rest)."""
    y = y_true[np.random.default_rng(0).permutation(len(y_true))]
    n_right = round(acc * len(y))
    return y, np.concatenate([y[:n_right], (y[n_right:] + 1) % k])


MAJ45 = np.concatenate([np.zeros(45, int), np.repeat(np.arange(1, 6), 11)])  # 'buildings' is the 45% majority
# (name, (y_true, y_pred), k, collapsed, reason fragment) — the rule: skill over the majority baseline <= 0.10
COLLAPSE_CASES = [
    ("2 classes, balanced, 74%", _scored(balanced(50, 2), 0.74, 2), 2, False, ""),
    ("2 classes, balanced, 55%: skill 0.10", _scored(balanced(50, 2), 0.55, 2), 2, True, "baseline 0.50"),
    ("45%-majority class for everything", (MAJ45, np.zeros(100, int)), K, True,
     "baseline 0.45 (always 'buildings'): skill 0.00 <= 0.10; predicts 'buildings' for 100% of images"),
    ("45%-majority data, 60%", _scored(MAJ45, 0.60, K), K, False, ""),
    ("one class on balanced 6 classes", (balanced(10), np.full(60, 2)), K, True,
     "accuracy 0.17 is not clearly above the majority-class baseline 0.17"),
    ("6 balanced at 0.25: boundary", _scored(balanced(20), 0.25, K), K, True, "skill 0.10"),
    ("6 balanced at 0.30", _scored(balanced(20), 0.30, K), K, False, ""),
    ("perfect on 70% majority data", (np.array([2] * 70 + [0] * 30), np.array([2] * 70 + [0] * 30)), K, False, ""),
    ("91% on 90% majority data", (np.array([1] * 90 + [0] * 10), np.array([1] * 90 + [0] * 1 + [1] * 9)), K, True,
     "skill 0.10"),
    ("95% on 90% majority data", (np.array([1] * 90 + [0] * 10), np.array([1] * 90 + [0] * 5 + [1] * 5)), K, False, ""),
    ("20 balanced classes at 0.20", _scored(balanced(5, 20), 0.20, 20), 20, False, ""),
    ("one true class only", (np.full(10, 3), np.full(10, 3)), K, True, "every true label is 'mountain'"),
    ("empty", (np.array([], dtype=int), np.array([], dtype=int)), K, True, "no predictions"),
]


@pytest.mark.parametrize(("name", "arrays", "k", "collapsed", "fragment"), COLLAPSE_CASES,
                         ids=[c[0] for c in COLLAPSE_CASES])
def test_collapse_rule(name: str, arrays: tuple[np.ndarray, np.ndarray], k: int, collapsed: bool,
                       fragment: str) -> None:
    y_true, y_pred = arrays
    flag, reason = is_collapsed(y_true, y_pred, k, NAMES if k <= K else None)
    assert flag is collapsed, reason
    assert fragment in reason
    if not collapsed:
        assert reason == ""


def test_all_one_class_predictions_collapse_in_metrics() -> None:
    y = balanced(10)
    m = evaluate_predictions(y, one_hot(np.full(60, 2)), NAMES)
    assert m.collapsed
    assert "predicts 'glacier' for 100%" in m.collapse_reason and "majority-class baseline" in m.collapse_reason
    assert m.pred_share["glacier"] == 1.0
    assert m.per_class["forest"]["precision"] == 0.0  # zero_division=0, no warnings needed


def test_random_probabilities_are_collapsed() -> None:
    rng = np.random.default_rng(1)
    y = balanced(100)
    probs = rng.dirichlet(np.ones(K), size=len(y))
    m = evaluate_predictions(y, probs, NAMES)
    assert m.accuracy < 0.25
    assert m.collapsed and "majority-class baseline" in m.collapse_reason
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

    from scene.evaluation.metrics import _bootstrap_stats

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
    t0 = time.process_time()  # this process's CPU seconds: other load on the machine does not count
    evaluate_predictions(y[:2000], probs[:2000], NAMES, bootstrap=1000)
    assert time.process_time() - t0 < 3.0  # vectorised: ~0.15 s; a loop of sklearn scores per resample: ~9 s


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


@pytest.mark.parametrize(
    ("b", "c", "two_sided", "greater"),
    [
        (15, 5, 0.04139, 0.02069),  # two-sided < 0.05 as well; at alpha 0.03 only the one-sided test rejects
        (14, 5, 0.06357, 0.03178),  # at alpha 0.05 only the one-sided test rejects
        (5, 15, 0.04139, 0.99409),  # worse: one-sided p near 1
        (3, 0, 0.25, 0.125),
    ],
)
def test_mcnemar_one_sided(b: int, c: int, two_sided: float, greater: float) -> None:
    a = np.array([True] * b + [False] * c + [True] * 7)
    other = np.array([False] * b + [True] * c + [True] * 7)
    assert mcnemar(a, other)[0] == pytest.approx(two_sided, abs=5e-5)
    p, bb, cc = mcnemar(a, other, alternative="greater")
    assert (bb, cc) == (b, c) and p == pytest.approx(greater, abs=5e-5)
    assert mcnemar(other, a, alternative="less")[0] == pytest.approx(greater, abs=5e-5)
    with pytest.raises(ValueError, match="alternative='one'"):
        mcnemar(a, other, alternative="one")
