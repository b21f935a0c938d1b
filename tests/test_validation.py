"""Tests for scene.data.validation: table-driven cases on small hand-made manifests.

The first validate_manifest call in a process imports great_expectations (~4 s); each call after that runs the
checkpoint in ~0.1–0.2 s, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from scene.data.validation import (
    SUITE_NAME,
    CheckResult,
    ValidationReport,
    ValidationThresholds,
    manifest_suite,
    publish_data_docs,
    validate_manifest,
)

CLASSES = ("forest", "glacier", "sea")
COLUMNS = ["key", "label", "label_index", "split", "sha256", "width", "height", "mode", "format", "bytes",
           "note"]
SIZES = (("train", 3), ("val", 1), ("test", 1))  # images per class and split in the clean manifest


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _row(label: str, split: str, i: int, **over: object) -> dict[str, object]:
    key = f"data/{label}/{split}-{i}.jpg"
    row = {"key": key, "label": label, "label_index": CLASSES.index(label) if label in CLASSES else -1,
           "split": split, "sha256": _sha(key), "width": 150, "height": 150, "mode": "RGB", "format": "JPEG",
           "bytes": 4000, "note": ""}
    return {**row, **over}


def clean_manifest() -> pd.DataFrame:
    """3 classes × (3 train, 1 val, 1 test) distinct images."""
    rows = [_row(c, s, i) for c in CLASSES for s, n in SIZES for i in range(n)]
    return pd.DataFrame(rows, columns=COLUMNS)


def no_rejected() -> pd.DataFrame:
    return pd.DataFrame(columns=["key", "label", "problem"])


def _key(df: pd.DataFrame, label: str, split: str, i: int = 0) -> int:
    """Row index of the i-th image of `label` in `split`."""
    return int(df.index[(df["label"] == label) & (df["split"] == split)][i])


def _set(df: pd.DataFrame, where: tuple[str, str], **values: object) -> pd.DataFrame:
    """Set columns of the first image of (label, split) `where`."""
    df = df.copy()
    for col, v in values.items():
        df.loc[_key(df, *where), col] = v
    return df


def _same_content(df: pd.DataFrame, a: tuple[str, str], b: tuple[str, str]) -> pd.DataFrame:
    """Give the first image of (label, split) b the content hash of the first image of a."""
    df = df.copy()
    df.loc[_key(df, *b), "sha256"] = df.loc[_key(df, *a), "sha256"]
    return df


def _add(df: pd.DataFrame, rows: list[dict[str, object]]) -> pd.DataFrame:
    return pd.concat([df, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)


def _rejected(n: int) -> pd.DataFrame:
    return pd.DataFrame([{"key": f"data/sea/bad-{i}.jpg", "label": "sea", "problem": "not an image"}
                         for i in range(n)])


Case = tuple[Callable[[], pd.DataFrame], Callable[[], pd.DataFrame], str, list[str]]

# id → (manifest, rejected, failing check, substrings of that check's failure line)
FAILING: dict[str, Case] = {
    "unknown label": (lambda: _set(clean_manifest(), ("sea", "train"), label="cat"), no_rejected,
                      "label_in_class_set", ["1 of 15 labels", "'cat' (data/sea/train-0.jpg)"]),
    "null key": (lambda: _set(clean_manifest(), ("glacier", "val"), key=None), no_rejected,
                 "key_not_null", ["1 of 15 rows without a key", "label 'glacier'"]),
    "null sha256": (lambda: _set(clean_manifest(), ("glacier", "val"), sha256=None), no_rejected,
                    "sha256_not_null", ["data/glacier/val-0.jpg"]),
    "bad split name": (lambda: _set(clean_manifest(), ("forest", "test"), split="holdout"), no_rejected,
                       "split_in_set", ["'holdout' (data/forest/test-0.jpg)"]),
    "image too small": (lambda: _set(clean_manifest(), ("forest", "train"), width=8), no_rejected,
                        "width_in_range", ["outside 32–10000", "8 (data/forest/train-0.jpg)"]),
    "image too tall": (lambda: _set(clean_manifest(), ("forest", "train"), height=20000), no_rejected,
                       "height_in_range", ["20000 (data/forest/train-0.jpg)"]),
    "mode not allowed": (lambda: _set(clean_manifest(), ("sea", "test"), mode="HSV"), no_rejected,
                         "mode_allowed", ["'HSV' (data/sea/test-0.jpg)"]),
    "duplicate key": (lambda: _set(clean_manifest(), ("sea", "test"), key="data/sea/train-0.jpg"),
                      no_rejected, "key_unique", ["'data/sea/train-0.jpg' ×2"]),
    "bad sha256": (lambda: _set(clean_manifest(), ("sea", "val"), sha256="xyz"), no_rejected,
                   "sha256_format", ["'xyz' (data/sea/val-0.jpg)"]),
    "label_index mismatch": (lambda: _set(clean_manifest(), ("sea", "val"), label_index=0), no_rejected,
                             "label_index_matches", ["data/sea/val-0.jpg", "expected 2"]),
    "image in two splits": (lambda: _same_content(clean_manifest(), ("forest", "train"), ("forest", "test")),
                            no_rejected, "cross_split",
                            ["image content in two splits: data/forest/train-0.jpg (train) = "
                             "data/forest/test-0.jpg (test)"]),
    "copies labelled differently": (lambda: _same_content(clean_manifest(), ("forest", "train"),
                                                          ("sea", "train")),
                                    no_rejected, "label_conflicts",
                                    ["data/forest/train-0.jpg ('forest') = data/sea/train-0.jpg ('sea')"]),
    "class missing from val": (lambda: _set(clean_manifest(), ("sea", "val"), split="train"), no_rejected,
                               "class_minimum", ["class 'sea' has 0 images in val"]),
    "class with too few images": (lambda: clean_manifest().query("not (label == 'sea' and split != 'val')"),
                                  no_rejected, "class_minimum",
                                  ["class 'sea' has 1 image (need ≥ 2)",
                                   "class 'sea' has 0 images in train"]),
    "class imbalance": (lambda: _add(clean_manifest(), [_row("forest", "train", i) for i in range(3, 50)]),
                        no_rejected, "class_balance", ["'forest' 52 / 'glacier' 5 = 10.4 (max 10)"]),
    "one class only": (lambda: clean_manifest().query("label == 'sea'"), no_rejected,
                       "classes_present", ["1 of 3 classes have images"]),
    "too many rejected": (clean_manifest, lambda: _rejected(4), "rejected_fraction",
                          ["4 of 19 files rejected (21.1%, max 20%)"]),
    "empty manifest": (lambda: clean_manifest().iloc[:0], lambda: _rejected(2), "not_empty",
                       ["no usable images (2 files rejected)"]),
    "empty frame without columns": (pd.DataFrame, no_rejected, "not_empty", ["no usable images"]),
    "missing column": (lambda: clean_manifest().drop(columns=["mode"]), no_rejected, "columns", ["['mode']"]),
}


@pytest.fixture(scope="module")
def clean_report() -> ValidationReport:
    return validate_manifest(clean_manifest(), _rejected(1), CLASSES)


def test_clean_manifest_passes(clean_report: ValidationReport) -> None:
    assert clean_report.success, clean_report.failures()
    assert clean_report.failures() == [] and clean_report.warnings() == []
    assert all(c.success for c in clean_report.checks)
    assert clean_report.counts["train"] == {"forest": 3, "glacier": 3, "sea": 3}
    assert clean_report.counts["val"] == clean_report.counts["test"] == {"forest": 1, "glacier": 1, "sea": 1}
    assert clean_report.total_images == 15
    assert clean_report.rejected == (("data/sea/bad-0.jpg", "not an image"),)
    assert clean_report.new_images is None and clean_report.moved == ()


def test_no_progress_bars(capfd: pytest.CaptureFixture[str]) -> None:
    validate_manifest(clean_manifest(), no_rejected(), CLASSES)
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in out + err and "it/s" not in out + err


@pytest.mark.parametrize("case", list(FAILING), ids=list(FAILING))
def test_failing_case(case: str) -> None:
    manifest, rejected, check, expected = FAILING[case]
    report = validate_manifest(manifest(), rejected(), CLASSES)
    assert not report.success
    failing = {c.name: c for c in report.checks if c.blocking and not c.success}
    assert check in failing, report.failures()
    line = f"{check}: {failing[check].observed}"
    assert line in report.failures()
    for text in expected:
        assert text in line + "\n" + "\n".join(failing[check].details), line


def test_only_the_expected_check_fails_for_a_single_bad_label() -> None:
    report = validate_manifest(_set(clean_manifest(), ("sea", "train"), label="cat"), no_rejected(), CLASSES)
    assert [f.split(":")[0] for f in report.failures()] == ["label_in_class_set"]
    assert report.counts["train"]["cat"] == 1  # unknown labels are counted, not dropped


def test_empty_manifest_fails_with_one_clear_message() -> None:
    report = validate_manifest(pd.DataFrame(columns=COLUMNS), None, CLASSES)
    assert not report.success
    assert report.failures() == ["not_empty: no usable images (0 files rejected)"]
    assert "no usable images" in report.summary_markdown()


def test_duplicates_within_a_split_warn_without_failing() -> None:
    df = clean_manifest()
    df.loc[_key(df, "forest", "train", 1), "sha256"] = df.loc[_key(df, "forest", "train", 0), "sha256"]
    report = validate_manifest(df, no_rejected(), CLASSES)
    assert report.success, report.failures()
    dup = report.check("duplicates_within_split")
    assert not dup.success and not dup.blocking
    assert report.warnings() == ["duplicates_within_split: duplicate content in train: "
                                 "data/forest/train-0.jpg = data/forest/train-1.jpg"]


def test_previous_manifest_split_change_fails_and_new_duplicate_is_listed() -> None:
    previous = clean_manifest()
    current = previous.copy()
    moved = _key(current, "glacier", "val")
    current.loc[moved, "split"] = "train"
    current = _add(current, [
        _row("glacier", "train", 5, sha256=_sha("data/glacier/train-2.jpg")),  # train-2's content, new key
        _row("sea", "train", 7),  # genuinely new
        _row("glacier", "val", 8),  # keeps glacier in val
    ])
    current = current[current["key"] != "data/sea/train-1.jpg"]  # removed since
    report = validate_manifest(current, no_rejected(), CLASSES, previous=previous)
    assert not report.success
    moved_check = report.check("split_moved")
    assert moved_check.blocking and not moved_check.success
    assert report.failures() == ["split_moved: image moved split: data/glacier/val-0.jpg is now in train, "
                                 "was in val (data/glacier/val-0.jpg)"]
    assert report.moved == (moved_check.observed,)
    assert report.new_duplicates == (
        "new image data/glacier/train-5.jpg duplicates data/glacier/train-2.jpg (already in train)",)
    assert "new_duplicates: new image data/glacier/train-5.jpg" in report.warnings()[-1]
    assert report.new_images == 2 and report.removed_images == 1


def test_previous_manifest_unchanged_passes() -> None:
    report = validate_manifest(clean_manifest(), no_rejected(), CLASSES, previous=clean_manifest())
    assert report.success, report.failures()
    assert report.new_images == 0 and report.removed_images == 0
    assert report.check("split_moved").success and report.check("new_duplicates").success


def test_many_offenders_are_capped_in_details() -> None:
    df = _add(clean_manifest(), [_row("sea", "train", i, width=4) for i in range(3, 40)])
    check = validate_manifest(df, no_rejected(), CLASSES).check("width_in_range")
    assert check.observed.startswith("37 of 52 images with width outside 32–10000: 4 (data/sea/train-3.jpg)")
    assert len(check.details) == 21 and check.details[-1] == "… and 17 more"


def test_summary_markdown_lists_checks_counts_rejected_and_notes() -> None:
    df = _set(clean_manifest(), ("sea", "train"), note="converted from CMYK", mode="CMYK")
    rejected = pd.DataFrame([{"key": "data/sea/a|b.jpg", "label": "sea", "problem": "unreadable: truncated"},
                             {"key": "data/forest/x.txt", "label": "forest", "problem": "not an image"}])
    report = validate_manifest(df, rejected, CLASSES)
    md = report.summary_markdown()
    assert report.success and report.converted == 1
    assert md.startswith("# Data validation ✅ passed")
    assert "| label_in_class_set | pass |" in md
    assert "| sea | 3 | 1 | 1 | 5 |" in md and "| **total** | 9 | 3 | 3 | 15 |" in md
    assert "## Rejected files (2)" in md
    assert "| data/sea/a\\|b.jpg | unreadable: truncated |" in md
    assert "| data/forest/x.txt | not an image |" in md
    assert "- data/sea/train-0.jpg: converted from CMYK" in md


def test_summary_markdown_of_a_failing_report_shows_details() -> None:
    report = validate_manifest(_set(clean_manifest(), ("sea", "val"), split="train"), no_rejected(), CLASSES)
    md = report.summary_markdown()
    assert md.startswith("# Data validation ❌ failed")
    assert "| class_minimum | ❌ FAIL | class 'sea' has 0 images in val |" in md
    assert "**class_minimum**\n\n- class 'sea' has 0 images in val" in md


def test_to_dict_is_json_ready(clean_report: ValidationReport) -> None:
    d = json.loads(json.dumps(clean_report.to_dict()))
    assert d["success"] is True and d["failures"] == []
    assert d["rejected"] == [{"key": "data/sea/bad-0.jpg", "problem": "not an image"}]
    assert d["thresholds"]["max_class_ratio"] == 10.0 and "CMYK" in d["thresholds"]["allowed_modes"]
    assert {c["name"] for c in d["checks"]} >= {"label_in_class_set", "cross_split", "class_balance"}


def test_custom_thresholds_apply() -> None:
    t = ValidationThresholds(max_class_ratio=1.5, min_side=200)
    df = _add(clean_manifest(), [_row("forest", "train", i) for i in range(3, 6)])  # forest 8, others 5
    report = validate_manifest(df, no_rejected(), CLASSES, t)
    names = {f.split(":")[0] for f in report.failures()}
    assert names == {"class_balance", "width_in_range", "height_in_range"}


@pytest.mark.parametrize("kwargs", [{"min_per_class": 1}, {"max_class_ratio": 0.5}, {"min_side": 0},
                                    {"min_side": 50, "max_side": 40}, {"max_rejected_fraction": 1.5}])
def test_bad_thresholds_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ValidationThresholds(**kwargs)


@pytest.mark.parametrize("class_names", ["sea", ()])
def test_bad_class_names_are_rejected(class_names: object) -> None:
    with pytest.raises(ValueError, match="class_names"):
        validate_manifest(clean_manifest(), no_rejected(), class_names)  # type: ignore[arg-type]


def test_a_failed_check_blocks_unless_marked_as_a_warning() -> None:
    checks = (CheckResult("broken", False, "2 bad rows"), CheckResult("odd", False, "1 odd row", blocking=False),
              CheckResult("fine", True, "all rows pass"))
    report = ValidationReport(success=False, checks=checks, counts={}, rejected=(), converted=0, notes=(),
                              total_images=3, thresholds=ValidationThresholds())
    assert report.failures() == ["broken: 2 bad rows"] and report.warnings() == ["odd: 1 odd row"]
    md = report.summary_markdown()
    assert "| broken | ❌ FAIL | 2 bad rows |" in md and "| odd | ⚠️ warning | 1 odd row |" in md
    assert "| fine | pass | all rows pass |" in md


def test_the_row_rules_are_one_named_suite() -> None:
    suite = manifest_suite(CLASSES)
    assert suite.name == SUITE_NAME == "scene_manifest"
    rules = [e.meta["check"] for e in suite.expectations]
    assert len(rules) == len(set(rules)) == 11
    gx_checks = [c.name for c in validate_manifest(clean_manifest(), no_rejected(), CLASSES).checks
                 if c.name in rules]
    assert gx_checks == rules  # every rule of the suite became a check of the report, in the suite's order
    in_set = next(e for e in suite.expectations if e.meta["check"] == "label_in_class_set")
    assert sorted(in_set.value_set) == sorted(CLASSES)
    without_mode = [e.meta["check"] for e in manifest_suite(CLASSES, skip={"mode"}).expectations]
    assert without_mode == [r for r in rules if r != "mode_allowed"]


def test_data_docs_render_the_checkpoint_result(tmp_path: Path) -> None:
    report = validate_manifest(_set(clean_manifest(), ("sea", "train"), label="cat"), no_rejected(), CLASSES,
                               docs_dir=tmp_path / "docs")
    assert report.data_docs and report.data_docs.startswith(f"validations/{SUITE_NAME}/")
    page = (tmp_path / "docs" / report.data_docs).read_text()
    assert "label" in page and "cat" in page and "Failed" in page  # the failing expectation and its bad value
    index = (tmp_path / "docs" / "index.html").read_text()
    assert SUITE_NAME in index and (tmp_path / "docs" / "expectations" / f"{SUITE_NAME}.html").is_file()
    assert report.to_dict()["data_docs"] == report.data_docs
    assert validate_manifest(clean_manifest(), no_rejected(), CLASSES).data_docs is None  # no folder: none built


def test_the_data_docs_pages_are_published(tmp_path: Path) -> None:
    report = validate_manifest(clean_manifest(), no_rejected(), CLASSES, docs_dir=tmp_path / "docs")
    prefix = f"{tmp_path}/run/"
    published = publish_data_docs(tmp_path / "docs", report.data_docs, prefix)
    assert published == {"index": f"{prefix}data-docs/index.html",
                         "validation": f"{prefix}data-docs/{report.data_docs}"}
    sent = {p.relative_to(tmp_path / "run" / "data-docs").as_posix() for p in (tmp_path / "run").rglob("*")
            if p.is_file()}
    assert {"index.html", f"expectations/{SUITE_NAME}.html", report.data_docs} <= sent
    assert not any(name.startswith(("static/images", "static/fonts")) for name in sent)  # 4 MB left out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert publish_data_docs(empty, None, prefix) == {}


def test_importing_the_module_does_not_import_great_expectations_or_prefect() -> None:
    code = ("import sys, scene.data.validation; "
            "assert 'great_expectations' not in sys.modules and 'prefect' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_rows_reused_from_the_previous_manifest_are_validated_without_reading_images(synth_dir: Path) -> None:
    """A retrain decodes no unchanged image, yet every row meets the suite: a stale row copied on trust fails."""
    from scene.data.dataset import build_dataset
    from tests.support.files import settled_files as _settled

    first = build_dataset(str(_settled(synth_dir)))
    key = first.manifest.at[0, "key"]
    previous = first.manifest.assign(width=first.manifest["width"].mask(first.manifest["key"] == key, 5))
    again = build_dataset(str(synth_dir), previous=previous)  # nothing changed on disk: nothing is read
    assert again.objects_read == 0 and again.rows_reused == len(first.manifest)
    report = validate_manifest(again.manifest, again.rejected, again.class_names, previous=previous)
    check = report.check("width_in_range")
    assert not check.success and check.observed.startswith(f"1 of {len(first.manifest)} ") and key in check.observed
