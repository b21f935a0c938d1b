"""Label-issue audit: confident learning (``cleanlab``) on out-of-fold probabilities of the head on cached features.

Each image's class probabilities come from a linear softmax head trained on the *other* folds' cached features,
so an image never votes on its own label. ``cleanlab.filter.find_label_issues``
then flags the images whose given label disagrees with what the data says, ranked most-likely-wrong first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ["rank", "key", "split", "label", "suggested", "quality", "p_label", "p_suggested"]


@dataclass(frozen=True)
class LabelAudit:
    """Flagged images (``issues``, ranked) and how many images were audited."""

    issues: pd.DataFrame = field(repr=False)  # COLUMNS, rank 1 = most likely mislabelled
    audited: int
    folds: int

    @property
    def flagged(self) -> int:
        return len(self.issues)

    def pairs(self) -> pd.DataFrame:
        """Flagged images per (given label → suggested label), most frequent first."""
        if self.issues.empty:
            return pd.DataFrame(columns=["label", "suggested", "images", "example"])
        g = self.issues.groupby(["label", "suggested"], sort=False)
        out = g.agg(images=("key", "size"), example=("key", "first")).reset_index()
        return out.sort_values(["images", "label"], ascending=[False, True]).reset_index(drop=True)

    def markdown(self, limit: int = 30) -> str:
        """A summary, the class pairs and the top ``limit`` flagged images (markdown)."""
        from scene.evaluation.report import markdown_table

        lines = [f"**{self.flagged}** of {self.audited} images look mislabelled "
                 f"(confident learning on {self.folds}-fold out-of-fold probabilities).", ""]
        if self.flagged:
            lines += ["### Class pairs (given → suggested)", "", markdown_table(self.pairs()), "",
                      f"### Most likely mislabelled (top {min(limit, self.flagged)})", "",
                      markdown_table(self.issues.head(limit).round(3))]
        return "\n".join(lines)


def report_rows(audit: LabelAudit, s3: Any = None, limit: int = 24) -> list[dict[str, Any]]:
    """The top ``limit`` flagged images with thumbnails, for :func:`~scene.evaluation.report.label_issues_html`."""
    return issue_rows(audit.issues, s3, limit)


def issue_rows_at(uri: str, s3: Any = None, limit: int = 24) -> list[dict[str, Any]]:
    """:func:`issue_rows` of a stored ``label_issues.csv`` (local or ``s3://``); none when it does not exist."""
    import io

    import pandas as pd

    from scene.data import storage

    if not storage.exists(uri, s3):
        return []
    return issue_rows(pd.read_csv(io.BytesIO(storage.read_bytes(uri, s3))), s3, limit)


def issue_rows(issues: Any, s3: Any = None, limit: int = 24) -> list[dict[str, Any]]:
    """:func:`report_rows` from the issues table itself (e.g. a run's ``label_issues.csv``)."""
    top = issues.head(limit)
    thumbs = thumbnails(top["key"].tolist(), s3)
    return [{**r, "thumb": thumbs.get(r["key"], "")} for r in top.to_dict("records")]


def write_html(path: str, audit: LabelAudit, s3: Any = None, limit: int = 48) -> str:
    """A self-contained page of the most likely mislabelled images (the ``report.html`` section on its own)."""
    import html
    from pathlib import Path

    from scene.evaluation.report import _CSS, label_issues_html

    body = label_issues_html(report_rows(audit, s3, limit)) or ["<p>No likely label issues.</p>"]
    Path(path).write_text("\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                                      f"<title>label issues</title><style>{_CSS}</style></head><body>",
                                      f"<h1>{html.escape(f'{audit.flagged} of {audit.audited} images flagged')}</h1>",
                                      *body, "</body></html>"]), encoding="utf-8")
    return path


def linear_head(c: float = 0.1) -> Any:
    """Standardise, then a multinomial logistic regression (L2, inverse strength ``c``): the audits' softmax head."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=200, tol=1e-3))


def out_of_fold_probs(x: np.ndarray, y: np.ndarray, num_classes: int, *, folds: int = 5, seed: int = 0,
                      c: float = 0.1) -> np.ndarray:
    """Class probabilities of every row from a linear softmax head trained on the other ``folds - 1`` folds.

    The head is a multinomial logistic regression on standardised cached features (L2, ``c`` = inverse
    strength): 5 folds over 8,741 × 1280 features took 76 s on a shared 2-core machine; the Keras head took
    ~6 s per fold (mostly graph tracing) on just 300 vectors there, so it is not refitted k times.
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=num_classes)
    present = counts[counts > 0]
    if folds < 2 or len(present) < 2 or present.min() < folds:
        raise ValueError(f"folds={folds}: needs ≥ 2 classes with at least that many images each (smallest class "
                         f"has {present.min() if len(present) else 0}); pass fewer folds (≥ 2) or add images")
    probs = np.full((len(y), num_classes), 1e-6, np.float64)
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        head = linear_head(c)
        head.fit(x[tr], y[tr])
        probs[np.ix_(te, head.classes_)] = head.predict_proba(x[te])
    return probs / probs.sum(1, keepdims=True)


def find_issues(probs: np.ndarray, y: np.ndarray, rows: pd.DataFrame, class_names: tuple[str, ...] | list[str],
                *, folds: int = 0) -> LabelAudit:
    """Flag and rank likely label errors (``cleanlab``) from out-of-fold ``probs`` of ``rows`` (given labels ``y``)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if len(rows) != len(y) or len(probs) != len(y):
        raise ValueError(f"rows ({len(rows)}), labels ({len(y)}) and probabilities ({len(probs)}) differ in length")
    if len(y) and len(np.unique(y)) < 2:
        raise ValueError("the label audit needs images of at least 2 classes; every image has the same label")
    # n_jobs=1: cleanlab otherwise forks a multiprocessing pool from this process, which runs TensorFlow's and
    # Prefect's threads; a fork taken while one of them holds a lock hangs for good (CI: a 900 s timeout). Results
    # do not depend on n_jobs, and one process takes milliseconds at these sizes.
    idx = (find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1) if len(y)
           else np.array([], int))
    quality = get_label_quality_scores(y, probs, method="self_confidence") if len(y) else np.array([])
    names = np.asarray(class_names)
    suggested = probs.argmax(1) if len(y) else np.array([], int)
    issues = pd.DataFrame({
        "rank": np.arange(1, len(idx) + 1),
        "key": rows["key"].to_numpy()[idx],
        "split": rows["split"].to_numpy()[idx] if "split" in rows else "",
        "label": names[y[idx]],
        "suggested": names[suggested[idx]],
        "quality": quality[idx],
        "p_label": probs[idx, y[idx]],
        "p_suggested": probs[idx, suggested[idx]],
    }, columns=COLUMNS)
    return LabelAudit(issues, len(y), folds)


def audit_labels(x: np.ndarray, rows: pd.DataFrame, class_names: tuple[str, ...] | list[str], *, folds: int = 5,
                 seed: int = 0) -> LabelAudit:
    """Out-of-fold probabilities of ``rows`` (features ``x``, labels ``rows.label_index``) → flagged images."""
    y = rows["label_index"].to_numpy().astype(int)
    probs = out_of_fold_probs(x, y, len(class_names), folds=folds, seed=seed)
    return find_issues(probs, y, rows, class_names, folds=folds)


def thumbnails(keys: list[str], s3: Any = None, size: int = 96) -> dict[str, str]:
    """``{key: data URI}`` of small JPEG thumbnails (unreadable images are left out)."""
    from scene.data import storage
    from scene.evaluation.report import thumbnail_data_uri

    out = {}
    for k in keys:
        try:
            uri = thumbnail_data_uri(storage.read_bytes(k, s3), size)
        except storage.StorageError:
            continue
        if uri:
            out[k] = uri
    return out
