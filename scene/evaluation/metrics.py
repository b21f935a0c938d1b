"""Evaluation of a classifier's predictions: metrics, bootstrap intervals, collapse flag, McNemar test.

Everything here works on plain numpy arrays (integer labels and an (N, K) probability matrix), so it is
independent of TensorFlow and cheap to test.

Collapse rule (see :func:`is_collapsed`): a model is compared with the *majority-class baseline*, the
classifier that always answers the most frequent true class of the split and so scores
``majority = max(true class share)``. Its *skill* is the share of the baseline's remaining errors it removes::

    skill = (accuracy - majority) / (1 - majority)

A model is *collapsed* when ``skill <= COLLAPSE_MIN_SKILL`` (0.10), i.e. its accuracy is not clearly above
the baseline; also when there are no predictions, or when every true label is one class (a split that
cannot show any skill). This works for any number of classes K: on balanced data the threshold is
``accuracy <= 1/K + 0.1 * (1 - 1/K)`` (K=2: 0.55, K=6: 0.25); a model that predicts a 45%-majority class
for every image scores exactly the baseline (skill 0) and is collapsed. The reason names the baseline
and, when one class takes at least 90% of the predictions, that class.

A collapsed model is never promoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

COLLAPSE_MIN_SKILL = 0.10  # skill over the majority-class baseline at or below this is a collapse
DOMINANT_PRED_SHARE = 0.90  # the reason names a predicted class covering at least this share
_EPS = 1e-9  # float tolerance at the thresholds


@dataclass(frozen=True)
class SplitMetrics:
    """Metrics of one split (train, val or test)."""

    n: int
    accuracy: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    auc_ovr_weighted: float | None
    auc_ovr_macro: float | None
    collapsed: bool
    collapse_reason: str
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    pred_share: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["ci"] = {k: [float(v[0]), float(v[1])] for k, v in self.ci.items()}
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitMetrics:
        """Inverse of :meth:`to_dict` (e.g. for a ``metrics.json`` read back from the registry)."""
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        kw["ci"] = {k: (float(v[0]), float(v[1])) for k, v in (d.get("ci") or {}).items()}
        kw["notes"] = tuple(d.get("notes") or ())
        kw.setdefault("pred_share", {})
        return cls(**kw)


def _as_labels(y: np.ndarray) -> np.ndarray:
    """Integer labels; a 2-D one-hot / probability array is reduced with argmax."""
    y = np.asarray(y)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    return y.astype(np.int64).ravel()


def is_collapsed(
    y_true: np.ndarray, y_pred: np.ndarray, k: int, class_names: Sequence[str] | None = None
) -> tuple[bool, str]:
    """Apply the collapse rule (module docstring); returns (collapsed, human-readable reason or "").

    Example reason: "accuracy 0.45 is not clearly above the majority-class baseline 0.45 (always 'sea'):
    skill 0.00 <= 0.10; predicts 'sea' for 100% of images".
    """
    y_true = _as_labels(y_true)
    y_pred = _as_labels(y_pred)
    n = len(y_pred)
    if n == 0:
        return True, "no predictions"
    if len(y_true) != n:
        raise ValueError(f"{len(y_true)} labels but {n} predictions")

    def name(i: int) -> str:
        return class_names[i] if class_names is not None and i < len(class_names) else str(i)

    true_share = np.bincount(y_true, minlength=k) / n
    pred_share = np.bincount(y_pred, minlength=k) / n
    top_true, top_pred = int(true_share.argmax()), int(pred_share.argmax())
    majority = float(true_share[top_true])
    acc = float(np.mean(y_true == y_pred))
    if majority >= 1.0 - _EPS:
        return True, (f"every true label is '{name(top_true)}': the split cannot show skill over the "
                      "majority-class baseline")
    skill = (acc - majority) / (1.0 - majority)
    if skill > COLLAPSE_MIN_SKILL + _EPS:
        return False, ""
    reason = (f"accuracy {acc:.2f} is not clearly above the majority-class baseline {majority:.2f} "
              f"(always '{name(top_true)}'): skill {skill:.2f} <= {COLLAPSE_MIN_SKILL:.2f}")
    if pred_share[top_pred] >= DOMINANT_PRED_SHARE:
        reason += f"; predicts '{name(top_pred)}' for {pred_share[top_pred]:.0%} of images"
    return True, reason


def _ovr_auc(y_true: np.ndarray, probs: np.ndarray, k: int) -> tuple[float | None, float | None, str]:
    """One-vs-rest AUC (weighted by prevalence, and macro); (None, None, note) when undefined."""
    counts = np.bincount(y_true, minlength=k)[:k]
    missing = [i for i in range(k) if counts[i] == 0]
    if missing:
        return None, None, "missing"
    if len(y_true) == 0:
        return None, None, "empty"
    aucs = np.array([roc_auc_score(y_true == i, probs[:, i]) for i in range(k)], dtype=float)
    weighted = float(np.sum(aucs * counts) / counts.sum())
    return weighted, float(aucs.mean()), ""


def _bootstrap_stats(
    y_true: np.ndarray, y_pred: np.ndarray, k: int, n_boot: int, seed: int, chunk: int = 250
) -> dict[str, np.ndarray]:
    """Accuracy and weighted F1 for ``n_boot`` resamples, via batched confusion matrices (no Python loop
    per resample)."""
    n = len(y_true)
    rng = np.random.default_rng(seed)
    code = y_true * k + y_pred
    accs: list[np.ndarray] = []
    f1s: list[np.ndarray] = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (code[idx] + (np.arange(b) * k * k)[:, None]).ravel()
        cm = np.bincount(flat, minlength=b * k * k).reshape(b, k, k).astype(float)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        support = cm.sum(axis=2)  # true counts per class
        predicted = cm.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = np.where(predicted > 0, tp / predicted, 0.0)
            rec = np.where(support > 0, tp / support, 0.0)
            f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
        accs.append(tp.sum(axis=1) / n)
        f1s.append((f1 * support).sum(axis=1) / n)
    return {"accuracy": np.concatenate(accs), "f1_weighted": np.concatenate(f1s)}


def evaluate_predictions(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> SplitMetrics:
    """Compute all metrics of one split from integer labels (or one-hot) and an (N, K) probability matrix.

    ``bootstrap`` > 0 adds 95% percentile intervals for accuracy and weighted F1 (seeded, reproducible).
    """
    k = len(class_names)
    probs = np.asarray(probs, dtype=float)
    y_true = _as_labels(y_true)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"probs must have shape (N, {k}), got {probs.shape}")
    if len(y_true) != len(probs):
        raise ValueError(f"{len(y_true)} labels but {len(probs)} probability rows")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"labels must be in [0, {k}), got range [{y_true.min()}, {y_true.max()}]")
    n = len(y_true)
    y_pred = probs.argmax(axis=1).astype(np.int64)
    labels = list(range(k))
    notes: list[str] = []

    if n:
        p_c, r_c, f_c, s_c = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=None, zero_division=0
        )
        pw, rw, fw, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average="weighted", zero_division=0
        )
        pm, rm, fm, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average="macro", zero_division=0
        )
        acc = float(accuracy_score(y_true, y_pred))
        cm = confusion_matrix(y_true, y_pred, labels=labels)
    else:
        p_c = r_c = f_c = s_c = np.zeros(k)
        pw = rw = fw = pm = rm = fm = acc = 0.0
        cm = np.zeros((k, k), dtype=int)
        notes.append("empty split: no items")

    auc_w, auc_m, why = _ovr_auc(y_true, probs, k)
    if why == "missing":
        absent = [class_names[i] for i in range(k) if not np.any(y_true == i)]
        notes.append(f"AUC undefined: class(es) absent from the true labels: {', '.join(absent)}")

    collapsed, reason = is_collapsed(y_true, y_pred, k, class_names)

    ci: dict[str, tuple[float, float]] = {}
    if bootstrap > 0 and n:
        stats = _bootstrap_stats(y_true, y_pred, k, bootstrap, seed)
        for key, values in stats.items():
            lo, hi = np.percentile(values, [2.5, 97.5])
            ci[key] = (float(lo), float(hi))

    counts = np.bincount(y_pred, minlength=k)[:k]
    pred_share = {name: (float(counts[i] / n) if n else 0.0) for i, name in enumerate(class_names)}
    per_class = {
        name: {
            "precision": float(p_c[i]),
            "recall": float(r_c[i]),
            "f1": float(f_c[i]),
            "support": float(s_c[i]),
        }
        for i, name in enumerate(class_names)
    }
    return SplitMetrics(
        n=int(n),
        accuracy=float(acc),
        precision_weighted=float(pw),
        recall_weighted=float(rw),
        f1_weighted=float(fw),
        precision_macro=float(pm),
        recall_macro=float(rm),
        f1_macro=float(fm),
        auc_ovr_weighted=auc_w,
        auc_ovr_macro=auc_m,
        collapsed=collapsed,
        collapse_reason=reason,
        per_class=per_class,
        confusion=[[int(x) for x in row] for row in np.asarray(cm)],
        ci=ci,
        pred_share=pred_share,
        notes=tuple(notes),
    )


def most_confused_pairs(
    confusion: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], top: int = 3
) -> list[tuple[str, str, int]]:
    """The ``top`` largest off-diagonal cells as (true, predicted, count), descending; zeros skipped.
    Ties keep row-major order."""
    cm = np.asarray(confusion, dtype=int)
    cells = [
        (class_names[i], class_names[j], int(cm[i, j]))
        for i in range(cm.shape[0])
        for j in range(cm.shape[1])
        if i != j and cm[i, j] > 0
    ]
    cells.sort(key=lambda t: -t[2])  # stable: ties stay in row-major order
    return cells[:top]


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray, alternative: str = "two-sided") -> tuple[float, int, int]:
    """Exact (binomial) McNemar test of two models scored on the same items.

    b = items only A gets right, c = items only B gets right; under the null hypothesis (equal error rates)
    b ~ Binomial(b + c, 1/2). ``alternative``: ``"two-sided"`` (the models differ), ``"greater"`` (A is
    better: p = P(X >= b)) or ``"less"`` (A is worse). Returns (p-value, b, c); p = 1.0 when there are no
    discordant pairs. The promotion gate uses ``"greater"`` with the challenger as A.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative={alternative!r}; pass 'two-sided', 'greater' or 'less'")
    a = np.asarray(correct_a, dtype=bool).ravel()
    bb = np.asarray(correct_b, dtype=bool).ravel()
    if a.shape != bb.shape:
        raise ValueError(f"correct_a and correct_b differ in length: {a.shape} vs {bb.shape}")
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    if b + c == 0:
        return 1.0, b, c
    p = float(binomtest(b, b + c, 0.5, alternative=alternative).pvalue)
    return min(p, 1.0), b, c
