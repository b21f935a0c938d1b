"""PNG plots of training and evaluation: learning curves, confusion matrix, one-vs-rest ROC curves.

Uses matplotlib's non-interactive Agg backend; every figure is closed after saving.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import auc, roc_curve

_DPI = 110


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG at ``path`` (parents created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=_DPI, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def _x_axis(history: pd.DataFrame) -> np.ndarray:
    """Epoch numbers when they increase monotonically across phases, else a running 1..N count."""
    if "epoch" in history.columns:
        ep = pd.to_numeric(history["epoch"], errors="coerce").to_numpy(dtype=float)
        if len(ep) and not np.isnan(ep).any() and np.all(np.diff(ep) > 0):
            return ep
    return np.arange(1, len(history) + 1, dtype=float)


def plot_learning_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """Loss and accuracy per epoch (train and validation), best val_loss epoch marked, phase boundary
    (head -> finetune) drawn when a ``phase`` column is present."""
    history = history.reset_index(drop=True)
    x = _x_axis(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for col, style in ((metric, "-"), (f"val_{metric}", "--")):
            if col in history.columns:
                y = pd.to_numeric(history[col], errors="coerce").to_numpy(dtype=float)
                ax.plot(x, y, style, marker=".", label=col)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)

    if "val_loss" in history.columns:
        vl = pd.to_numeric(history["val_loss"], errors="coerce").to_numpy(dtype=float)
        if len(vl) and not np.all(np.isnan(vl)):
            best = int(np.nanargmin(vl))
            for ax in axes:
                ax.axvline(
                    x[best], color="tab:green", linestyle=":", label=f"best val_loss (epoch {x[best]:g})"
                )
            axes[0].plot([x[best]], [vl[best]], "o", color="tab:green")

    if "phase" in history.columns:
        phases = history["phase"].astype(str).to_numpy()
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                boundary = (x[i - 1] + x[i]) / 2
                for ax in axes:
                    ax.axvline(boundary, color="grey", linestyle="-", alpha=0.6)
                    ax.text(
                        boundary,
                        1.0,
                        f" {phases[i]}",
                        transform=ax.get_xaxis_transform(),
                        va="top",
                        ha="left",
                        fontsize=8,
                        color="grey",
                    )
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Confusion matrix: cell colour = row-normalised share (recall per true class), text = raw count."""
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(class_names)
    size = max(4.0, 0.8 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=colour, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve per class with its AUC in the legend (classes absent from y_true noted)."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    probs = np.asarray(probs, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for i, name in enumerate(class_names):
        pos = y == i
        if not pos.any() or pos.all():
            ax.plot([], [], label=f"{name} (AUC n/a)")
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, i])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one vs rest")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
