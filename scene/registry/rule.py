"""The promotion gate as pure functions of per-image test outcomes (no I/O; :mod:`scene.registry` stores it).

A challenger replaces the champion *of its dataset* only when every rule holds (:func:`decide`):

1. it is not collapsed (:func:`scene.evaluation.metrics.is_collapsed`), not random-init and not trained on generated
   (synthetic) data — such models are registered and flagged, and only a manual
   ``scene models promote VERSION --force`` makes one champion;
2. there is no champion yet, or, on the test images both models were scored on (paired by content hash):

   a. the one-sided exact McNemar test rejects "the challenger is no better" at ``alpha`` (default 0.05):
      with b = images only the challenger gets right and c = images only the champion gets right,
      ``p = P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``; promote only if ``b > c`` and ``p < alpha``;
   b. per-class non-inferiority: for every class among the paired images, the challenger's recall is at
      least the champion's minus ``margin`` (default 0.03), even when the overall test says better.

The test split is used by this test only: the challenger is chosen among backbones on *validation*
metrics (:func:`select_challenger`), never on test. It is used *repeatedly*, though: splits are sticky, so every
retrain of a dataset is gated on (mostly) the same test images. The level is therefore spent over the gates
(:func:`spent_alpha`): gate k of a dataset's test split tests at ``alpha * 6 / (pi**2 * k**2)``, and since
``sum 6/(pi**2 k**2) = 1`` the chance that *any* no-better challenger is ever promoted on that split stays below
``alpha`` (``docs/gate.md``). The gate counter lives in the registry (:func:`scene.registry.champions.gate`).

A champion and a challenger whose class lists differ (names or order) are never compared: the champion's output
indices would be read in the challenger's label order. Such a gate refuses, naming both lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from scene.evaluation.metrics import mcnemar

ALPHA = 0.05  # significance level of the one-sided McNemar test
MARGIN = 0.03  # largest allowed drop of any class's recall
PREDICTION_COLUMNS = ("key", "sha256", "y_true", "y_pred", "correct")
_EPS = 1e-9  # float tolerance at the margin
MANUAL_HINT = "only `scene models promote VERSION --force` makes such a model champion"


class GateError(ValueError):
    """Prediction tables the gate cannot use; the message names the table and what is wrong."""


def spent_alpha(alpha: float, gate_number: int | None) -> float:
    """The level of gate ``gate_number`` (1, 2, ...) of one test split: ``alpha * 6 / (pi**2 * k**2)``.

    The levels of all gates of a split sum to ``alpha`` (Basel series), so by the union bound the chance that a
    no-better challenger is promoted at *any* of them is at most ``alpha``. None: a single, unaccounted test
    (level ``alpha``).
    """
    if gate_number is None:
        return alpha
    if gate_number < 1:
        raise ValueError(f"gate_number={gate_number}: pass the count of gates on this test split, 1 or more")
    return alpha * 6 / (math.pi**2 * gate_number**2)


def class_mismatch(challenger_classes: Sequence[str] | None, champion_classes: Sequence[str] | None) -> str:
    """Why two models' outputs cannot be compared ("" when they can, or when a list is unknown)."""
    if challenger_classes is None or champion_classes is None or list(challenger_classes) == list(champion_classes):
        return ""
    return (f"the champion's classes {list(champion_classes)} differ from the challenger's "
            f"{list(challenger_classes)} (names or order): its outputs cannot be scored on this test split; "
            "retrain with the champion's classes, or promote by hand with `scene models promote VERSION`")


@dataclass(frozen=True, eq=False)
class Paired:
    """Both models' predictions on the images both were scored on, sorted by sha256."""

    sha256: np.ndarray
    y_true: np.ndarray
    challenger_pred: np.ndarray
    champion_pred: np.ndarray

    def __len__(self) -> int:
        return len(self.y_true)

    @property
    def challenger_correct(self) -> np.ndarray:
        return self.challenger_pred == self.y_true

    @property
    def champion_correct(self) -> np.ndarray:
        return self.champion_pred == self.y_true


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and the evidence behind it (stored as ``decision.json`` / ``decision.md``)."""

    promote: bool
    reason: str
    challenger: str | None = None  # version ids
    champion: str | None = None
    p_value: float | None = None  # exact McNemar, one-sided (challenger better); None without a champion
    b: int = 0  # paired images only the challenger gets right
    c: int = 0  # paired images only the champion gets right
    n_paired: int = 0  # images both were scored on (all the challenger's test images without a champion)
    alpha: float = ALPHA
    challenger_acc: float | None = None  # accuracy on the paired images
    champion_acc: float | None = None
    margin: float = MARGIN
    per_class: list[dict[str, Any]] = field(default_factory=list)  # see per_class_recall
    dataset: str = ""  # the data lineage both models belong to
    smoke: dict[str, Any] | None = None  # the fresh-process load check of the exported model (scene.registry.smoke)
    gate_number: int | None = None  # k: gates this dataset's test split has served, this one included
    alpha_level: float | None = None  # the level this test used: spent_alpha(alpha, gate_number)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def markdown(self) -> str:
        """The verdict, the McNemar evidence and the per-class table, for ``decision.md`` and Prefect artifacts."""
        verdict = "**promote**" if self.promote else "**do not promote**"
        rows = [
            ("version", self.challenger or "—", self.champion or "(none)"),
            ("accuracy on paired images", _fmt(self.challenger_acc), _fmt(self.champion_acc)),
            ("images only this model gets right", *((str(self.b), str(self.c)) if self.champion else ("—", "—"))),
        ]
        lines = [f"Decision: {verdict} — {self.reason}", ""]
        if self.dataset:
            lines += [f"Dataset: `{self.dataset}`", ""]
        lines += ["| | challenger | champion |", "| --- | --- | --- |", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
        if self.p_value is not None:
            level = (f"level {self.alpha_level:.4g}: gate {self.gate_number} of this test split, alpha {self.alpha} "
                     "spent over all its gates" if self.gate_number else f"alpha {self.alpha}")
            lines += ["", f"Exact McNemar test, one-sided (challenger better), on {self.n_paired} paired test "
                          f"images: p = {self.p_value:.4g} ({level})."]
        elif self.champion is None:
            lines += ["", f"No champion to compare with; {self.n_paired} test images scored."]
        if self.per_class:
            lines += ["", f"Per-class recall on the paired images (a class may drop by at most {self.margin}):", "",
                      "| class | n | champion | challenger | change | ok |", "| --- | --- | --- | --- | --- | --- |"]
            lines += [f"| {r['class']} | {r['n']} | {r['champion_recall']:.3f} | {r['challenger_recall']:.3f} | "
                      f"{r['delta']:+.3f} | {'yes' if r['ok'] else '**no**'} |" for r in self.per_class]
        if self.smoke:
            lines += ["", f"Fresh-process load check: {'passed' if self.smoke.get('ok') else 'FAILED'} — "
                          f"{self.smoke.get('reason', '')}"]
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _as_bool(s: pd.Series, what: str) -> np.ndarray:
    if s.dtype == bool:
        return s.to_numpy()
    text = s.astype(str).str.strip().str.lower()
    bad = sorted(set(text) - {"true", "false", "1", "0"})
    if bad:
        raise GateError(f"{what}: 'correct' must be true/false, got {bad[:5]}")
    return text.isin(["true", "1"]).to_numpy()


def outcomes(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """``sha256, y_true, y_pred`` of a prediction table, one row per image, checked for consistency."""
    missing = [c for c in ("sha256", "y_true", "y_pred") if c not in df.columns]
    if missing:
        raise GateError(f"{what}: missing column {missing[0]!r}; expected {list(PREDICTION_COLUMNS)} "
                        "(scene.train.experiment.test_predictions writes them)")
    out = df.drop_duplicates("sha256")
    try:
        y_true, y_pred = out["y_true"].astype("int64"), out["y_pred"].astype("int64")
    except (TypeError, ValueError) as err:
        raise GateError(f"{what}: y_true and y_pred must be class indices ({err})") from err
    if "correct" in out.columns and not np.array_equal(_as_bool(out["correct"], what), (y_true == y_pred).to_numpy()):
        raise GateError(f"{what}: 'correct' disagrees with y_true == y_pred; the table is corrupt, re-score the model")
    return pd.DataFrame({"sha256": out["sha256"].astype(str), "y_true": y_true, "y_pred": y_pred})


def pair(challenger_df: pd.DataFrame, champion_df: pd.DataFrame, *, challenger_classes: Sequence[str] | None = None,
         champion_classes: Sequence[str] | None = None) -> Paired:
    """Both models' predictions on the images both were scored on (inner join on sha256).

    Images only one table has are ignored; a duplicated image counts once. Raises when the two tables give
    the same image different labels (score the champion on the current test split), or when both class lists are
    given and differ (the indices mean different classes).
    """
    mismatch = class_mismatch(challenger_classes, champion_classes)
    if mismatch:
        raise GateError(mismatch)
    a = outcomes(challenger_df, "challenger predictions")
    b = outcomes(champion_df, "champion predictions")
    joined = a.merge(b, on="sha256", suffixes=("_a", "_b")).sort_values("sha256")
    differ = joined[joined["y_true_a"] != joined["y_true_b"]]
    if len(differ):
        raise GateError(f"{len(differ)} paired images have different labels in the two tables (e.g. sha256 "
                        f"{differ['sha256'].iloc[0]}); evaluate the champion on the current test split")
    return Paired(joined["sha256"].to_numpy(), joined["y_true_a"].to_numpy(), joined["y_pred_a"].to_numpy(),
                  joined["y_pred_b"].to_numpy())


def per_class_recall(paired: Paired, *, margin: float = MARGIN,
                     class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per class among the paired images: n, both recalls, change, and whether it is within ``margin``."""
    rows = []
    for k in sorted(int(v) for v in np.unique(paired.y_true)):
        mask = paired.y_true == k
        champ = float(np.mean(paired.champion_pred[mask] == k))
        chall = float(np.mean(paired.challenger_pred[mask] == k))
        name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
        rows.append({"class": name, "index": k, "n": int(mask.sum()), "champion_recall": champ,
                     "challenger_recall": chall, "delta": chall - champ, "ok": bool(chall - champ >= -margin - _EPS)})
    return rows


def _flags(collapsed: bool, random_init: bool, synthetic_data: bool) -> str:
    """Why the challenger may never be promoted automatically ("" when it may)."""
    why = []
    if collapsed:
        why.append("challenger is collapsed; a collapsed model is never promoted automatically")
    if random_init:
        why.append("challenger was trained from random initialisation (not transfer learning)")
    if synthetic_data:
        why.append("challenger was trained on generated (synthetic) data")
    return "; ".join(why) + f" — {MANUAL_HINT}" if why else ""


def _check_levels(alpha: float, margin: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: pass a significance level between 0 and 1, e.g. 0.05")
    if not 0 <= margin < 1:
        raise ValueError(f"margin={margin}: pass the largest allowed drop of a class's recall, e.g. 0.03")


def _evidence(challenger_df: pd.DataFrame, champion_df: pd.DataFrame | None, margin: float,
              class_names: Sequence[str] | None) -> dict[str, Any]:
    """The Decision fields measured on the data (McNemar counts, accuracies, per-class table)."""
    if champion_df is None:
        own = outcomes(challenger_df, "challenger predictions")
        acc = float((own["y_true"] == own["y_pred"]).mean()) if len(own) else None
        return {"n_paired": len(own), "challenger_acc": acc}
    pr = pair(challenger_df, champion_df)
    p, b, c = mcnemar(pr.challenger_correct, pr.champion_correct, alternative="greater")
    return {"p_value": p, "b": b, "c": c, "n_paired": len(pr),
            "challenger_acc": float(pr.challenger_correct.mean()) if len(pr) else None,
            "champion_acc": float(pr.champion_correct.mean()) if len(pr) else None,
            "per_class": per_class_recall(pr, margin=margin, class_names=class_names)}


def decide(challenger_predictions: pd.DataFrame, champion_predictions: pd.DataFrame | None, *,
           challenger_collapsed: bool, random_init: bool = False, synthetic_data: bool = False,
           alpha: float = ALPHA, margin: float = MARGIN, challenger: str | None = None,
           champion: str | None = None, class_names: Sequence[str] | None = None, dataset: str = "",
           champion_classes: Sequence[str] | None = None, gate_number: int | None = None) -> Decision:
    """The promotion rule (module docstring) on two prediction tables (``PREDICTION_COLUMNS``).

    ``champion_predictions`` is None when the dataset has no champion yet. The evidence is measured even
    when a flag refuses the challenger, so the decision always shows it. ``class_names`` (the challenger's) and
    ``champion_classes``: when both are given and differ, the gate refuses without comparing. ``gate_number``:
    how many gates this test split has served, this one included; the test then runs at
    :func:`spent_alpha` ``(alpha, gate_number)`` (None: at ``alpha``).
    """
    _check_levels(alpha, margin)
    level = spent_alpha(alpha, gate_number)
    stats: dict[str, Any] = {"challenger": challenger, "champion": champion, "alpha": alpha, "margin": margin,
                             "dataset": dataset, "gate_number": gate_number, "alpha_level": level}
    mismatch = class_mismatch(class_names, champion_classes) if champion_predictions is not None else ""
    if mismatch:
        return Decision(False, mismatch, **stats)
    stats.update(_evidence(challenger_predictions, champion_predictions, margin, class_names))
    refused = _flags(challenger_collapsed, random_init, synthetic_data)
    if refused:
        return Decision(False, refused, **stats)
    if champion_predictions is None:
        return Decision(True, "no champion yet", **{**stats, "alpha_level": None, "gate_number": None})
    b, c, p = stats["b"], stats["c"], stats["p_value"]
    if stats["n_paired"] == 0:
        return Decision(False, "no test image was scored by both models; evaluate the champion on the current "
                               "test split", **stats)
    if b <= c:
        return Decision(False, f"challenger is not better on the paired images (only it right {b}, "
                               f"only the champion right {c})", **stats)
    if p >= level:
        return Decision(False, f"challenger is better but not significantly (one-sided p={p:.4g} >= {_level(stats)})",
                        **stats)
    worse = [r for r in stats["per_class"] if not r["ok"]]
    if worse:
        drops = ", ".join(f"{r['class']} {r['champion_recall']:.2f} → {r['challenger_recall']:.2f}" for r in worse)
        return Decision(False, f"challenger is significantly better (p={p:.4g}) but class recall drops by more "
                               f"than {margin}: {drops}", **stats)
    return Decision(True, f"challenger is significantly better (one-sided p={p:.4g} < {_level(stats)}) and no "
                          f"class recall drops by more than {margin}", **stats)


def _level(stats: dict[str, Any]) -> str:
    """The test's level as a decision's reason states it."""
    if stats["gate_number"] is None:
        return f"{stats['alpha']}"
    return (f"{stats['alpha_level']:.4g}, the level of gate {stats['gate_number']} of this test split with alpha "
            f"{stats['alpha']} spent over its gates")


def _get(result: Any, name: str) -> Any:
    return result.get(name) if isinstance(result, dict) else getattr(result, name, None)


def select_challenger(results: Sequence[Any]) -> Any | None:
    """The usable result (status ``ok``) with the best *validation* weighted F1; ties go to validation
    accuracy, then to the earlier result. Test metrics are never looked at. None when none is usable.

    ``results``: :class:`scene.train.experiment.TrainResult` objects or their dicts.
    """
    def key(r: Any) -> tuple[float, float]:
        val = (_get(r, "metrics") or {}).get("val") or {}
        f1, acc = val.get("f1_weighted"), val.get("accuracy")
        return (float("-inf") if f1 is None else float(f1), float("-inf") if acc is None else float(acc))

    usable = [r for r in results if _get(r, "status") == "ok"]
    return max(usable, key=key) if usable else None
