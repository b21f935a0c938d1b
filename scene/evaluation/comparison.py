"""The backbone comparison: one row per run, sorted, the best backbone by validation F1, warnings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

COMPARISON_COLUMNS: tuple[str, ...] = (
    "backbone",
    "weights",
    "strategy",
    "status",
    "error",
    "test_accuracy",
    "test_f1_weighted",
    "test_f1_macro",
    "test_auc_ovr_weighted",
    "val_f1_weighted",
    "train_f1_weighted",
    "seconds",
)


def comparison_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run with the :data:`COMPARISON_COLUMNS` first (missing values NaN/""), sorted by
    test_f1_weighted descending; failed rows (and rows without a test F1) last."""
    df = pd.DataFrame(list(rows))
    for col in COMPARISON_COLUMNS:
        if col not in df.columns:
            df[col] = "" if col in ("backbone", "weights", "strategy", "status", "error") else float("nan")
    for col in ("backbone", "weights", "strategy", "status", "error"):
        df[col] = df[col].fillna("").astype(str)
    numeric = [
        c for c in COMPARISON_COLUMNS if c not in ("backbone", "weights", "strategy", "status", "error")
    ]
    for col in numeric:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df = df[list(COMPARISON_COLUMNS) + [c for c in df.columns if c not in COMPARISON_COLUMNS]]
    if df.empty:
        return df.reset_index(drop=True)
    failed = (df["status"] == "failed") | df["test_f1_weighted"].isna()
    key = df["test_f1_weighted"].fillna(-math.inf)
    order = sorted(range(len(df)), key=lambda i: (bool(failed.iloc[i]), -key.iloc[i]))
    return df.iloc[order].reset_index(drop=True)


def best_row(df: pd.DataFrame) -> dict[str, Any] | None:
    """The row with the highest *validation* F1 among ok (not failed, not collapsed) runs, or None.

    Chosen on validation, as the promotion gate chooses its challenger: the test split only reports.
    """
    ok = df[(df["status"] == "ok") & df["val_f1_weighted"].notna()]
    if ok.empty:
        return None
    return ok.sort_values(["val_f1_weighted", "test_f1_weighted"], ascending=False, kind="stable").iloc[0].to_dict()


def comparison_markdown(df: pd.DataFrame) -> str:
    """The comparison as markdown: table, best backbone line, warnings for random-init and failed runs."""
    from scene.evaluation import tables

    lines = ["# Backbone comparison", "", tables.markdown(tables.display_rows(df.to_dict("records"), 80))]
    best = best_row(df)
    if best is not None:
        lines.append(
            f"**Best backbone by validation F1 (weighted): {best['backbone']}** "
            f"({tables.weights_label(best['weights'])}, {best['strategy']}) — val F1 {best['val_f1_weighted']:.3f}, "
            f"test F1 {best['test_f1_weighted']:.3f}"
        )
    else:
        lines.append("**No successful, non-collapsed run**: no best backbone.")
    lines.append("")
    for _, r in df.iterrows():
        label = f"{r['backbone']} ({tables.weights_label(r['weights'])}, {r['strategy']})"
        if str(r["weights"]).lower() == "none":
            lines.append(f"- ⚠ {label}: random init — not a transfer-learning result")
        if r["status"] == "collapsed":
            lines.append(f"- ⚠ {label}: collapsed — never promoted")
        if r["status"] == "failed":
            lines.append(f"- ✗ {label}: failed: {r['error'] or 'unknown error'}")
    return "\n".join(lines).rstrip() + "\n"


def write_comparison(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.csv`` and ``comparison.md`` into ``out_dir``; returns (csv path, md path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = comparison_table(rows)
    csv_path, md_path = out / "comparison.csv", out / "comparison.md"
    df.to_csv(csv_path, index=False)
    md_path.write_text(comparison_markdown(df), encoding="utf-8")
    return csv_path, md_path
