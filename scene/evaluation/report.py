"""The self-contained HTML report of one model, and the table helpers the model card shares
(:mod:`~scene.evaluation.model_card`; the backbone comparison is :mod:`~scene.evaluation.comparison`)."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from scene.evaluation.metrics import SplitMetrics, most_confused_pairs

SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")

_E = html.escape


# --------------------------------------------------------------------------------------------- helpers


def thumbnail_data_uri(image_bytes: bytes, size: int = 96) -> str:
    """A base64 JPEG ``data:`` URI of a thumbnail (longest side ``size``); "" when the bytes don't decode."""
    try:
        with Image.open(io.BytesIO(image_bytes)) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except Exception:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _png_data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:`` URI; "" when missing."""
    p = Path(path)
    if not p.is_file():
        return ""
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def _fmt(v: Any, digits: int = 3) -> str:
    """Number formatting for tables: floats to ``digits`` decimals, None/NaN as "", the rest as str."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    try:
        if pd.isna(v):
            return ""
    except (TypeError, ValueError):
        pass
    if hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f":
        return f"{float(v):.{digits}f}"
    return str(v)


def ordered_splits(metrics: dict[str, SplitMetrics]) -> list[str]:
    """train, val, test first (those present), then any other split names in insertion order."""
    return [s for s in SPLIT_ORDER if s in metrics] + [s for s in metrics if s not in SPLIT_ORDER]


def _with_ci(m: SplitMetrics, key: str) -> str:
    """A metric value, with its bootstrap interval when one exists."""
    v = getattr(m, key)
    s = _fmt(v)
    if key in m.ci:
        lo, hi = m.ci[key]
        s += f" [{lo:.3f}, {hi:.3f}]"
    return s


_METRIC_ROWS: tuple[tuple[str, str], ...] = (
    ("n", "items"),
    ("accuracy", "accuracy"),
    ("precision_weighted", "precision (weighted)"),
    ("recall_weighted", "recall (weighted)"),
    ("f1_weighted", "F1 (weighted)"),
    ("precision_macro", "precision (macro)"),
    ("recall_macro", "recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("auc_ovr_weighted", "AUC one-vs-rest (weighted)"),
    ("auc_ovr_macro", "AUC one-vs-rest (macro)"),
    ("collapsed", "collapsed"),
)


def metrics_frame(metrics: dict[str, SplitMetrics]) -> pd.DataFrame:
    """Metric name x split table of display strings (bootstrap intervals appended where present)."""
    splits = ordered_splits(metrics)
    data = {split: [_with_ci(metrics[split], key) for key, _ in _METRIC_ROWS] for split in splits}
    return pd.DataFrame(data, index=[label for _, label in _METRIC_ROWS])


def markdown_table(df: pd.DataFrame, index: bool = False) -> str:
    """A GitHub-flavoured markdown table; floats to 3 decimals, NaN/None empty, pipes escaped."""

    def cell(v: Any) -> str:
        return _fmt(v).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    if index:
        cols = [str(df.index.name or ""), *cols]
    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for idx, row in zip(df.index, df.itertuples(index=False, name=None), strict=True):
        values = ([idx] if index else []) + list(row)
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ HTML report

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
.warn{background:#fdecea;border:1px solid #e0403a;color:#8a1c17;padding:.6rem 1rem;border-radius:4px}
.warn li{margin:.2rem 0}.ok{color:#1b7a2a}.bad{color:#c0271f;font-weight:bold}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{font-weight:bold}dd{margin:0}
.plots img{max-width:100%;border:1px solid #eee;margin:.4rem 0}.thumbs img{margin:2px;border:1px solid #ccc}
.muted{color:#777;font-size:.9em}
"""


def _html_table(df: pd.DataFrame, index: bool = True) -> str:
    """A pandas frame as an escaped HTML table."""
    head = ([str(df.index.name or "")] if index else []) + [str(c) for c in df.columns]
    out = ["<table><thead><tr>" + "".join(f"<th>{_E(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for idx, row in zip(df.index, df.itertuples(index=False, name=None), strict=True):
        cells = ([idx] if index else []) + list(row)
        out.append("<tr>" + "".join(f"<td>{_E(_fmt(v))}</td>" for v in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _per_class_frame(m: SplitMetrics) -> pd.DataFrame:
    """Per-class precision/recall/F1/support plus share of predictions."""
    rows = {
        name: {
            "precision": d.get("precision"),
            "recall": d.get("recall"),
            "f1": d.get("f1"),
            "support": int(d.get("support", 0)),
            "predicted share": m.pred_share.get(name),
        }
        for name, d in m.per_class.items()
    }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "class"
    return df


def label_issues_html(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The "Likely mislabelled images" section: ``rows`` of {key, label, suggested, quality, thumb (data URI)}."""
    if not rows:
        return []
    parts = ["<h2>Likely mislabelled images</h2>",
             '<p class="muted">Confident learning (cleanlab) on out-of-fold probabilities; most likely first.</p>',
             '<div class="thumbs">']
    for r in rows:
        thumb = str(r.get("thumb", ""))
        img = f'<img alt="{_E(str(r["key"]), quote=True)}" src="{_E(thumb, quote=True)}">' \
            if thumb.startswith("data:image/") else ""
        parts.append(f'<figure style="display:inline-block;margin:4px">{img}<figcaption>{_E(str(r["label"]))} → '
                     f'<strong>{_E(str(r["suggested"]))}</strong> ({float(r["quality"]):.2f})<br>'
                     f'<small>{_E(Path(str(r["key"])).name)}</small></figcaption></figure>')
    return [*parts, "</div>"]


def write_report_html(
    path: str | Path,
    *,
    title: str,
    summary: dict[str, str],
    metrics: dict[str, SplitMetrics],
    plots: dict[str, Path],
    confusions: list[dict[str, Any]],
    warnings: list[str],
    label_issues: Sequence[dict[str, Any]] = (),
) -> Path:
    """Write one self-contained HTML page (plots and thumbnails embedded as data URIs, no external links).

    ``confusions``: [{"true", "pred", "count", "examples": [data URIs]}]; examples that are not
    ``data:image/`` URIs are dropped so the page stays self-contained. Returns the path.
    """
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_E(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_E(title)}</h1>",
    ]
    collapsed = [s for s in ordered_splits(metrics) if metrics[s].collapsed]
    all_warnings = list(warnings) + [f"collapsed on {s}: {metrics[s].collapse_reason}" for s in collapsed]
    if all_warnings:
        parts.append('<div class="warn"><strong>Warnings</strong><ul>')
        parts += [f"<li>{_E(w)}</li>" for w in all_warnings]
        parts.append("</ul></div>")

    if summary:
        parts.append("<h2>Summary</h2><dl>")
        parts += [f"<dt>{_E(str(k))}</dt><dd>{_E(str(v))}</dd>" for k, v in summary.items()]
        parts.append("</dl>")

    parts.append("<h2>Metrics</h2>")
    if metrics:
        parts.append(_html_table(metrics_frame(metrics)))
        if any(m.ci for m in metrics.values()):
            parts.append('<p class="muted">[a, b]: 95% bootstrap interval.</p>')
        for split in ordered_splits(metrics):
            m = metrics[split]
            status = (
                f'<span class="bad">collapsed: {_E(m.collapse_reason)}</span>'
                if m.collapsed
                else '<span class="ok">not collapsed</span>'
            )
            notes = "".join(f"; {_E(n)}" for n in m.notes)
            parts.append(f"<p><strong>{_E(split)}</strong>: {status}{notes}</p>")
    else:
        parts.append('<p class="muted">No metrics.</p>')

    per_class_split = "test" if "test" in metrics else ("val" if "val" in metrics else None)
    if per_class_split:
        m = metrics[per_class_split]
        parts.append(f"<h2>Per class ({_E(per_class_split)})</h2>")
        parts.append(_html_table(_per_class_frame(m)))
        pairs = most_confused_pairs(m.confusion, list(m.per_class), top=5)
        if pairs and not confusions:
            parts.append(
                "<p>Most confused (true → predicted): "
                + ", ".join(f"{_E(t)} → {_E(p)} ({c})" for t, p, c in pairs)
                + "</p>"
            )

    if plots:
        parts.append('<h2>Plots</h2><div class="plots">')
        for name, p in plots.items():
            uri = _png_data_uri(p)
            parts.append(f"<h3>{_E(str(name))}</h3>")
            if uri:
                parts.append(f'<img alt="{_E(str(name), quote=True)}" src="{uri}">')
            else:
                parts.append(f'<p class="muted">plot missing: {_E(Path(p).name)}</p>')
        parts.append("</div>")

    if confusions:
        parts.append("<h2>Most confused pairs</h2>")
        for conf in confusions:
            true, pred, count = str(conf.get("true", "")), str(conf.get("pred", "")), conf.get("count", 0)
            parts.append(
                f"<h3>{_E(true)} → {_E(pred)} <span class='muted'>({_E(str(count))} images)</span></h3>"
            )
            thumbs = [
                u for u in conf.get("examples", []) if isinstance(u, str) and u.startswith("data:image/")
            ]
            if thumbs:
                alt = _E(f"{true} predicted as {pred}", quote=True)
                parts.append(
                    '<div class="thumbs">'
                    + "".join(f'<img alt="{alt}" src="{_E(u, quote=True)}">' for u in thumbs)
                    + "</div>"
                )
            else:
                parts.append('<p class="muted">no examples</p>')

    parts += label_issues_html(label_issues)
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
