"""How every table a person reads is formatted: the Prefect table artifact, comparison.md, ``scene runs show/watch``.

One row per backbone, columns in reading order (:data:`COLUMNS`): numbers to 3 decimals, seconds whole, weights
as a short label, and failed / collapsed rows marked so they stand out in a plain-text or markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# display column -> the comparison-row key it comes from (scene.train.experiment.TrainResult.comparison_row)
SOURCES: dict[str, str] = {
    "backbone": "backbone",
    "status": "status",
    "test F1": "test_f1_weighted",
    "accuracy": "test_accuracy",
    "AUC": "test_auc_ovr_weighted",
    "val F1": "val_f1_weighted",
    "seconds": "seconds",
    "weights": "weights",
}
COLUMNS: tuple[str, ...] = tuple(SOURCES)
NOTE = "note"  # last column: why a row failed or collapsed (shortened)
STATUS_LABELS = {"ok": "ok", "collapsed": "⚠ collapsed", "failed": "✗ failed"}
NOTE_WIDTH = 60


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None (None, "", NaN, text that is not a number)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def fmt_metric(v: Any, digits: int = 3) -> str:
    """A metric to ``digits`` decimals (``0.4666666`` → ``0.467``); missing as ""."""
    f = _number(v)
    return "" if f is None else f"{f:.{digits}f}"


def fmt_seconds(v: Any) -> str:
    """Seconds as a whole number (``412.64`` → ``413``); missing as ""."""
    f = _number(v)
    return "" if f is None else str(round(f))


def weights_label(w: Any) -> str:
    """``imagenet``, ``none``, or a weights file's name (``s3://b/w/x.weights.h5`` → ``x.weights.h5``)."""
    text = "" if w is None else str(w).strip()
    if text.lower() in ("imagenet", "none", ""):
        return text.lower()
    return text.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]


def status_label(status: Any) -> str:
    """``ok``, ``⚠ collapsed`` or ``✗ failed`` (any other status as given)."""
    s = "" if status is None else str(status)
    return STATUS_LABELS.get(s, s)


def shorten(text: Any, width: int = NOTE_WIDTH) -> str:
    """One line of at most ``width`` characters (``…`` when cut)."""
    one = " ".join(str(text or "").split())
    return one if len(one) <= width else one[: width - 1] + "…"


def display_row(row: Mapping[str, Any], note_width: int = NOTE_WIDTH) -> dict[str, str]:
    """One comparison row (raw numbers) as display strings keyed by :data:`COLUMNS` plus :data:`NOTE`."""
    out = {
        "backbone": str(row.get("backbone") or ""),
        "status": status_label(row.get("status")),
        "seconds": fmt_seconds(row.get("seconds")),
        "weights": weights_label(row.get("weights")),
    }
    for col in ("test F1", "accuracy", "AUC", "val F1"):
        out[col] = fmt_metric(row.get(SOURCES[col]))
    error = row.get("error")
    error = "" if error is None or (isinstance(error, float) and math.isnan(error)) else str(error)
    note = error or ("collapsed: never promoted" if row.get("status") == "collapsed" else "")
    out[NOTE] = shorten(note, note_width)
    return {c: out[c] for c in (*COLUMNS, NOTE)}


def display_rows(rows: Iterable[Mapping[str, Any]], note_width: int = NOTE_WIDTH) -> list[dict[str, str]]:
    """Every row formatted (order kept); the note column is dropped when no row has a note."""
    shown = [display_row(r, note_width) for r in rows]
    if not any(r[NOTE] for r in shown):
        for r in shown:
            del r[NOTE]
    return shown


def _cells(rows: Sequence[Mapping[str, str]]) -> tuple[list[str], list[list[str]]]:
    columns = list(rows[0]) if rows else list(COLUMNS)
    return columns, [[str(r.get(c, "")) for c in columns] for r in rows]


def markdown(rows: Sequence[Mapping[str, str]]) -> str:
    """Display rows as a GitHub-flavoured markdown table (pipes escaped; numbers right-aligned)."""
    columns, body = _cells(rows)
    numeric = {"test F1", "accuracy", "AUC", "val F1", "seconds"}

    def cell(v: str) -> str:
        return v.replace("\\", "\\\\").replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join(" ---: " if c in numeric else " --- " for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in body]
    return "\n".join(lines) + "\n"


def text(rows: Sequence[Mapping[str, str]]) -> str:
    """Display rows as an aligned plain-text table for the terminal."""
    columns, body = _cells(rows)
    widths = [max([len(c), *(len(r[i]) for r in body)]) for i, c in enumerate(columns)]
    numeric = {"test F1", "accuracy", "AUC", "val F1", "seconds"}

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if c in numeric else v.ljust(w)
                         for c, v, w in zip(columns, values, widths, strict=True)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in body)]) + "\n"
