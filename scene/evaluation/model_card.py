"""The markdown model card of one model: warnings, intended use, training data, parameters, metrics, limitations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from scene.evaluation.metrics import SplitMetrics
from scene.evaluation.report import markdown_table, metrics_frame, ordered_splits

# Known label noise in the Intel Image Classification data (pairs that are often genuinely ambiguous).
INTEL_CONFUSABLE: tuple[tuple[str, str], ...] = (("glacier", "mountain"), ("buildings", "street"))


def _param_value(v: Any) -> str:
    """Scalars as str, containers as compact JSON."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str, sort_keys=True)
    return str(v)


def write_model_card(
    path: str | Path,
    *,
    name: str,
    summary: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, SplitMetrics],
    warnings: list[str],
    extra_sections: dict[str, str] | None = None,
) -> Path:
    """Write a markdown model card: warnings first, then intended use, training data, parameters,
    metrics per split, limitations, and any ``extra_sections`` (heading -> markdown body)."""
    lines: list[str] = [f"# Model card: {name}", ""]
    collapsed = [s for s in ordered_splits(metrics) if metrics[s].collapsed]
    all_warnings = list(warnings) + [f"collapsed on {s}: {metrics[s].collapse_reason}" for s in collapsed]
    if all_warnings:
        lines += ["## Warnings", ""] + [f"> ⚠ {w}  " for w in all_warnings] + [""]

    if summary:
        lines += ["## Summary", ""]
        lines += [f"- **{k}**: {v}" for k, v in summary.items()] + [""]

    class_names = next((list(m.per_class) for m in metrics.values() if m.per_class), [])
    lines += [
        "## Intended use",
        "",
        "Classifies a natural-scene photo into one of: "
        + (", ".join(f"`{c}`" for c in class_names) if class_names else "the trained classes")
        + ". Trained by transfer learning (a pretrained backbone with a small classification head) for "
        "experimentation and comparison of backbones; not validated for safety-critical use or for photos "
        "unlike the training distribution (e.g. indoor scenes, drawings, heavy filters).",
        "",
        "## Training data",
        "",
    ]
    fingerprint = next((v for k, v in summary.items() if "fingerprint" in k.lower()), None)
    if fingerprint:
        lines.append(f"- data fingerprint: `{fingerprint}`")
    for split in ordered_splits(metrics):
        lines.append(f"- {split}: {metrics[split].n} images")
    if "train" in metrics and metrics["train"].per_class:
        counts = ", ".join(f"{c} {int(d.get('support', 0))}" for c, d in metrics["train"].per_class.items())
        lines.append(f"- train per class: {counts}")
    lines.append("")

    lines += ["## Parameters", ""]
    if params:
        pdf = pd.DataFrame({"parameter": list(params), "value": [_param_value(v) for v in params.values()]})
        lines.append(markdown_table(pdf))
    else:
        lines += ["(none recorded)", ""]

    lines += ["## Metrics", ""]
    if metrics:
        lines.append(markdown_table(metrics_frame(metrics).rename_axis("metric"), index=True))
        if any(m.ci for m in metrics.values()):
            lines += ["[a, b]: 95% bootstrap interval.", ""]
    else:
        lines += ["(no metrics)", ""]

    lines += ["## Limitations", ""]
    if collapsed:
        lines.append(f"- **Collapsed** on {', '.join(collapsed)}: this model must not be promoted.")
    else:
        lines.append("- Not collapsed on any evaluated split.")
    noisy = [(a, b) for a, b in INTEL_CONFUSABLE if a in class_names and b in class_names]
    if noisy:
        pairs = " and ".join(f"{a} ↔ {b}" for a, b in noisy)
        lines.append(
            f"- The Intel labels are noisy between {pairs}: many photos fit both classes, so errors "
            "between these pairs partly reflect the labels, not only the model."
        )
    for split in ordered_splits(metrics):
        for note in metrics[split].notes:
            lines.append(f"- {split}: {note}")
    lines.append("- Metrics are measured on the held-out test folder; other photo sources may score lower.")
    lines.append("")

    for heading, body in (extra_sections or {}).items():
        lines += [f"## {heading}", "", body.rstrip(), ""]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
