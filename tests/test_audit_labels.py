"""Label-issue audit on feature vectors with known clusters and planted mislabels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scene.audit.labels import LabelAudit, audit_labels, find_issues

CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")


def clusters(per_class: int = 50, dim: int = 24, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Six Gaussian clusters (features) and manifest-like rows with their true labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(CLASSES), dim)) * 2.5
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    x = (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32)
    rows = pd.DataFrame({"key": [f"img{i:04d}.jpg" for i in range(len(y))], "split": "train", "label_index": y,
                         "label": np.asarray(CLASSES)[y], "sha256": [f"{i:064x}" for i in range(len(y))]})
    return x, rows


def test_planted_mislabels_are_found_with_high_precision_and_recall() -> None:
    x, rows = clusters()
    rng = np.random.default_rng(1)
    planted = rng.choice(len(rows), 18, replace=False)  # 6% of the labels flipped to another class
    flipped = (rows.loc[planted, "label_index"] + rng.integers(1, len(CLASSES), len(planted))) % len(CLASSES)
    rows.loc[planted, "label_index"] = flipped
    rows.loc[planted, "label"] = np.asarray(CLASSES)[flipped]
    audit = audit_labels(x, rows, CLASSES, folds=3, seed=0)
    flagged = set(audit.issues["key"])
    truth = set(rows.loc[planted, "key"])
    precision, recall = len(flagged & truth) / max(len(flagged), 1), len(flagged & truth) / len(truth)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall, audit.flagged)
    assert list(audit.issues["rank"]) == list(range(1, audit.flagged + 1))
    top = audit.issues.iloc[0]
    assert top["key"] in truth and top["suggested"] != top["label"]
    assert audit.pairs()["images"].sum() == audit.flagged
    assert "look mislabelled" in audit.markdown()


def test_find_issues_ranks_the_least_confident_given_label_first() -> None:
    rows = pd.DataFrame({"key": list("abcdef"), "split": "train"})
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[.9, .1], [.95, .05], [.05, .95], [.1, .9], [.2, .8], [.7, .3]])
    audit = find_issues(probs, y, rows, ("a", "b"))
    assert list(audit.issues["key"]) == ["c", "f"]  # c: given a, p(a)=0.05; f: given b, p(b)=0.3
    assert list(audit.issues["suggested"]) == ["b", "a"]


def test_too_few_images_per_fold_or_one_class_is_a_clear_error() -> None:
    x, rows = clusters(per_class=2)
    with pytest.raises(ValueError, match="folds=3"):
        audit_labels(x, rows, CLASSES, folds=3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        find_issues(np.full((3, 2), 0.5), np.zeros(3, int), rows.head(3), ("a", "b"))


def test_report_html_gets_a_label_issues_section_with_thumbnails(tmp_path) -> None:
    from PIL import Image

    from scene.audit.labels import report_rows
    from scene.evaluation.report import write_report_html

    img = tmp_path / "street" / "7.jpg"
    img.parent.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    issues = pd.DataFrame({"rank": [1, 2], "key": [str(img), "missing.jpg"], "split": "train",
                           "label": "street", "suggested": "buildings", "quality": [0.03, 0.1], "p_label": [0.03, 0.1],
                           "p_suggested": [0.97, 0.9]})
    audit = LabelAudit(issues, 10, 5)
    page = write_report_html(tmp_path / "report.html", title="t", summary={}, metrics={}, plots={}, confusions=[],
                             warnings=[], label_issues=report_rows(audit)).read_text()
    assert "Likely mislabelled images" in page and page.count("<figure") == 2
    assert page.count("data:image/jpeg;base64,") == 1  # the unreadable key is listed without a thumbnail
    assert "street → <strong>buildings</strong>" in page
    bare = write_report_html(tmp_path / "r2.html", title="t", summary={}, metrics={}, plots={}, confusions=[],
                             warnings=[]).read_text()
    assert "mislabelled" not in bare


def test_a_runs_label_audit_reaches_each_backbones_report_html(tmp_path) -> None:
    """The flow writes ``<run prefix>/label_issues.csv``; every backbone's report step puts it in report.html."""
    from PIL import Image

    from scene.audit.labels import issue_rows_at
    from scene.evaluation.report import write_report_html

    x, rows = clusters(per_class=20)
    rows["key"] = [str(tmp_path / f"{i}.jpg") for i in range(len(rows))]
    for key in rows["key"]:
        Image.new("RGB", (40, 40), (90, 140, 200)).save(key)
    rows.loc[:2, "label_index"] = 5
    rows.loc[:2, "label"] = CLASSES[5]
    audit = audit_labels(x, rows, CLASSES, folds=3, seed=0)
    assert issue_rows_at(str(tmp_path / "label_issues.csv")) == []  # no audit in this run: no section
    audit.issues.to_csv(tmp_path / "label_issues.csv", index=False)
    got = issue_rows_at(str(tmp_path / "label_issues.csv"))
    assert [r["key"] for r in got] == audit.issues["key"].head(24).tolist() and got[0]["thumb"]
    write_report_html(tmp_path / "report.html", title="t", summary={}, metrics={}, plots={}, confusions=[],
                      warnings=[], label_issues=got)
    page = (tmp_path / "report.html").read_text()
    assert got[0]["key"].split("/")[-1] in page and "data:image" in page


def test_the_label_audit_never_forks_a_process_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """It runs inside a flow process full of TensorFlow and Prefect threads, where a forked pool can hang for good
    (a lock held by another thread at the fork); cleanlab must run in this process."""
    import multiprocessing

    import cleanlab.filter

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the label audit started a multiprocessing pool")

    monkeypatch.setattr(multiprocessing, "Pool", refuse)
    # as on a machine with 8 cores, where cleanlab's default would fork 8 workers (psutil or not)
    monkeypatch.setattr(multiprocessing, "cpu_count", lambda: 8)
    monkeypatch.setattr(cleanlab.filter, "psutil_exists", False)
    x, rows = clusters(per_class=20)
    audit = audit_labels(x, rows, CLASSES, folds=3, seed=0)
    assert audit.flagged <= 3
