"""Data validation: a great-expectations checkpoint plus dataset-level checks on the manifest → `ValidationReport`.

Row-level rules (labels in the class set, no missing keys, sizes, modes, unique keys, hash format) form one named
great-expectations `ExpectationSuite` (:data:`SUITE_NAME`, built by :func:`manifest_suite`), run by a `Checkpoint`
over a `ValidationDefinition` of the manifest DataFrame; given ``docs_dir``, the checkpoint's `UpdateDataDocsAction`
renders the result as Data Docs (HTML) there. Dataset-level rules (images per class and split, class balance, the
same content in two splits, rejected share, changes since the champion's manifest) compare groups of rows and run in
pandas. Every outcome becomes a `CheckResult` (:mod:`scene.data.validation_report`) with a human-readable observation
naming the offending keys. Blocking checks decide `ValidationReport.success`; non-blocking ones are warnings.
great_expectations is imported lazily (~3–4 s) the first time `validate_manifest` runs, never on import.

No check decodes an image: the image checks (sizes, modes, conversions) read the manifest's columns, which the
manifest builder filled when it read each image — once per object version (see :mod:`scene.data.dataset`), so a
retrain validates every row of the manifest while decoding only its new images, and that only in the builder.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd

from scene.data.validation_report import (
    MAX_LISTED,
    CheckResult,
    ValidationReport,
    ValidationThresholds,
    limit,
    listing,
    plural,
)
from scene.metadata import SPLITS

__all__ = ["DATA_DOCS", "DOCS_SITE", "MAX_LISTED", "REQUIRED_COLUMNS", "SUITE_NAME", "CheckResult", "ValidationReport",
           "ValidationThresholds", "manifest_suite", "publish_data_docs", "validate_and_publish",
           "validate_manifest"]
REQUIRED_COLUMNS = ("key", "label", "split", "sha256", "width", "height", "mode")
_SHA256 = r"^[0-9a-f]{64}$"  # a hex digest as the manifest builder writes it
_SHOWN = 3  # offending items quoted in a check's one-line observation
SUITE_NAME = "scene_manifest"  # the expectation suite, its validation definition and its checkpoint
DOCS_SITE = "scene"  # the Data Docs site validate_manifest(docs_dir=...) builds
DATA_DOCS = "data-docs/"  # under a run's prefix: the published Data Docs of the run's validation
# what of a Data Docs site is published: the pages and their stylesheet; the site's images and fonts (4 MB, the
# same every run) stay out, so a page shows broken logos but all its content
DATA_DOCS_FILES = ("*.html", "expectations/**/*.html", "validations/**/*.html", "static/styles/*.css")
_GX_LOCK = threading.Lock()  # get_context() sets a process-wide project: one checkpoint run at a time


def validate_manifest(
    manifest: pd.DataFrame,
    rejected: pd.DataFrame | None,
    class_names: Sequence[str],
    thresholds: ValidationThresholds = ValidationThresholds(),
    previous: pd.DataFrame | None = None,
    docs_dir: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """Run the great-expectations checkpoint and the dataset-level checks; never raises on bad data.

    `rejected` lists the files the manifest builder skipped (key, label, problem). `previous` is the
    manifest the current champion was trained on: with it, images that moved split fail validation, and new
    keys duplicating old content are listed. `docs_dir`: a folder for the suite's Data Docs (HTML: ``index.html``,
    the suite, this validation's page); the report's ``data_docs`` is that page's path relative to it (None when the
    manifest has no rows: the suite did not run).
    """
    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"manifest: expected a pandas DataFrame, got {type(manifest).__name__}")
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"class_names={class_names!r}: pass a non-empty sequence of class names")
    class_names = tuple(class_names)
    rej = rejected if rejected is not None else pd.DataFrame(columns=["key", "label", "problem"])
    df = manifest.reset_index(drop=True)
    docs = Path(docs_dir) if docs_dir is not None else None
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
    checks: list[CheckResult] = []
    page = None

    n = len(df)
    checks.append(CheckResult("not_empty", n > 0, f"{plural(n, 'usable image')}" if n else
                              f"no usable images ({plural(len(rej), 'file')} rejected)"))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if n and missing:
        checks.append(CheckResult("columns", False, f"manifest lacks columns {missing}; "
                                  f"it needs {list(REQUIRED_COLUMNS)}"))
    for c in missing:
        df[c] = pd.Series([None] * n, dtype=object)
    if n:
        row_checks, page = _run_expectations(df, class_names, thresholds, set(missing), docs)
        checks += row_checks
        if "label_index" in df.columns:
            checks.append(_label_index_check(df, class_names))

    counts = _counts(df, class_names)
    cross = _cross_split_lines(df)
    if n:  # with no images the class and duplicate checks would only repeat "no usable images"
        checks += _class_checks(counts, class_names, thresholds)
        checks.append(listing("cross_split", cross, "no image content appears in two splits"))
        conflicts = _label_conflict_lines(df)
        checks.append(listing("label_conflicts", conflicts, "copies agree on their label",
                               blocking=len(conflicts) > thresholds.max_label_conflict_fraction * len(df)))
        checks.append(listing("duplicates_within_split", _duplicate_lines(df),
                               "no duplicate content within a split", blocking=False))
    checks.append(_rejected_check(n, rej, thresholds))

    moved: list[str] = []
    new_dups: list[str] = []
    new_images = removed = None
    if previous is not None:
        lacking = [c for c in ("key", "split", "sha256") if c not in previous.columns]
        if lacking:
            checks.append(CheckResult("previous_manifest", False,
                                      f"previous manifest lacks columns {lacking}"))
        else:
            moved, new_dups, new_images, removed = _compare_previous(df, previous)
            checks.append(listing("split_moved", moved,
                                   f"no image changed split ({len(previous)} previous rows)"))
            checks.append(listing("new_duplicates", new_dups, "no new key duplicates earlier content",
                                   blocking=False))

    notes = _notes(df)
    rejected_list = tuple((str(k), str(p)) for k, p in zip(rej.get("key", []), rej.get("problem", []),
                                                           strict=False))
    return ValidationReport(
        success=all(c.success for c in checks if c.blocking), checks=tuple(checks), counts=counts,
        rejected=rejected_list,
        converted=len(notes), notes=notes, total_images=n, thresholds=thresholds, cross_split=tuple(cross),
        new_images=new_images, removed_images=removed, new_duplicates=tuple(new_dups), moved=tuple(moved),
        data_docs=page)


def publish_data_docs(docs_dir: str | Path, page: str | None, prefix: str, client: Any = None) -> dict[str, str]:
    """Upload a Data Docs site's pages (:data:`DATA_DOCS_FILES`) under ``<prefix>data-docs/`` (local or S3).

    Returns ``{"index": uri, "validation": uri}`` (``validation``: the page ``page`` names, relative to
    ``docs_dir``, when given); ``{}`` when ``docs_dir`` holds no page (an empty manifest runs no suite).
    """
    from scene.data import storage

    root, base = Path(docs_dir), prefix.rstrip("/") + "/" + DATA_DOCS
    files = sorted({p for pattern in DATA_DOCS_FILES for p in root.glob(pattern) if p.is_file()})
    for path in files:
        storage.write_bytes(base + path.relative_to(root).as_posix(), path.read_bytes(), client)
    if not (root / "index.html").is_file():
        return {}
    return {"index": base + "index.html", **({"validation": base + page} if page else {})}


def validate_and_publish(
    manifest: pd.DataFrame,
    rejected: pd.DataFrame | None,
    class_names: Sequence[str],
    prefix: str,
    client: Any = None,
    previous: pd.DataFrame | None = None,
) -> tuple[ValidationReport, dict[str, str]]:
    """:func:`validate_manifest` with its Data Docs built in a temporary folder and published under
    ``<prefix>data-docs/`` (:func:`publish_data_docs`); returns the report and the published pages."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scene-data-docs-") as docs:
        report = validate_manifest(manifest, rejected, class_names, previous=previous, docs_dir=docs)
        return report, publish_data_docs(docs, report.data_docs, prefix, client)


# --- the great-expectations suite, run by a checkpoint ---------------------------------------------------


def _row_rules(class_names: Sequence[str], t: ValidationThresholds) -> dict[str, tuple[str, Any, str, str]]:
    """check name → (column, expectation, how one offending row reads, what the observation counts)."""
    import great_expectations.expectations as gxe

    size = f"{t.min_side}–{t.max_side}"
    in_set, not_null = gxe.ExpectColumnValuesToBeInSet, gxe.ExpectColumnValuesToNotBeNull
    between = gxe.ExpectColumnValuesToBeBetween
    return {
        "label_in_class_set": ("label", in_set(column="label", value_set=list(class_names)),
                               "{v!r} ({who})", "labels not in class set"),
        "split_in_set": ("split", in_set(column="split", value_set=list(SPLITS)),
                         "{v!r} ({who})", f"splits not in {list(SPLITS)}"),
        "mode_allowed": ("mode", in_set(column="mode", value_set=list(t.allowed_modes)),
                         "{v!r} ({who})", "image modes not allowed"),
        **{f"{c}_not_null": (c, not_null(column=c), "{who}", f"rows without a {c}")
           for c in ("key", "label", "split", "sha256")},
        **{f"{c}_in_range": (c, between(column=c, min_value=t.min_side, max_value=t.max_side),
                             "{v} ({who})", f"images with {c} outside {size}") for c in ("width", "height")},
        "key_unique": ("key", gxe.ExpectColumnValuesToBeUnique(column="key"), "", "rows repeat a key"),
        "sha256_format": ("sha256", gxe.ExpectColumnValuesToMatchRegex(column="sha256", regex=_SHA256),
                          "{v!r} ({who})", "sha256 values not 64 lowercase hex digits"),
    }


def manifest_suite(class_names: Sequence[str], thresholds: ValidationThresholds = ValidationThresholds(),
                   skip: Collection[str] = ()) -> Any:
    """The row rules as one great-expectations ``ExpectationSuite`` named :data:`SUITE_NAME` (for inspection:
    `validate_manifest` runs it through a checkpoint).

    Each expectation's ``meta["check"]`` is the name of the `CheckResult` it becomes; ``skip`` leaves out the rules
    on those columns (the manifest lacks them: the ``columns`` check reports that instead).
    """
    with _GX_LOCK:
        _context()
        return _suite(tuple(class_names), thresholds, skip)


def _context() -> Any:
    """A fresh ephemeral data context (a few ms; it becomes great-expectations' process-wide project)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _suite(class_names: tuple[str, ...], t: ValidationThresholds, skip: Collection[str]) -> Any:
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=SUITE_NAME, meta={"notes": "scene: the row rules of an image manifest"})
    for name, (column, expectation, _, _) in _row_rules(class_names, t).items():
        if column not in skip:
            expectation.meta = {"check": name}
            suite.add_expectation(expectation)
    return suite


def _run_expectations(df: pd.DataFrame, class_names: tuple[str, ...], t: ValidationThresholds,
                      skip: set[str], docs_dir: Path | None) -> tuple[list[CheckResult], str | None]:
    with _GX_LOCK:
        return _run_checkpoint(df, class_names, t, skip, docs_dir)


def _run_checkpoint(df: pd.DataFrame, class_names: tuple[str, ...], t: ValidationThresholds,
                    skip: set[str], docs_dir: Path | None) -> tuple[list[CheckResult], str | None]:
    """Run the suite through a checkpoint on a fresh ephemeral context; with ``docs_dir``, build Data Docs there.

    Returns the checks in the suite's order and the validation page's path relative to ``docs_dir`` (or None).
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = _context()  # nothing is kept between calls
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(DOCS_SITE, {
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}})
        actions.append(UpdateDataDocsAction(name="data docs", site_names=[DOCS_SITE]))
    batch = context.data_sources.add_pandas("scene").add_dataframe_asset("manifest") \
        .add_batch_definition_whole_dataframe("whole manifest")
    suite = context.suites.add(_suite(class_names, t, skip))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=SUITE_NAME, validation_definitions=[definition], actions=actions,
        result_format={"result_format": "COMPLETE"}))
    run = checkpoint.run(batch_parameters={"dataframe": df})
    (result_id, outcome), = run.run_results.items()
    page = None
    if docs_dir is not None:
        (site,) = context.get_docs_sites_urls(resource_identifier=result_id, site_names=[DOCS_SITE])
        page = Path(url2pathname(urlparse(site["site_url"]).path)).relative_to(docs_dir.resolve()).as_posix()
    rules = _row_rules(class_names, t)
    checks = []
    for r in outcome.results:
        name = r.expectation_config.meta["check"]
        _, _, row_text, what = rules[name]
        checks.append(_from_gx(name, r, df, row_text, what))
    order = list(rules)
    return sorted(checks, key=lambda c: order.index(c.name)), page


def _from_gx(name: str, r: Any, df: pd.DataFrame, row_text: str, what: str) -> CheckResult:
    if r.exception_info and r.exception_info.get("raised_exception"):
        return CheckResult(name, False, f"check could not run: {r.exception_info.get('exception_message')}")
    res = r.result or {}
    total = res.get("element_count", len(df))
    count = res.get("unexpected_count", 0) or 0
    if r.success:
        return CheckResult(name, True, f"all {total} rows pass" if total else "no rows to check")
    rows = res.get("unexpected_index_list") or res.get("partial_unexpected_index_list") or []
    values = res.get("unexpected_list") or res.get("partial_unexpected_list") or []
    items = [row_text.format(v=v, who=_who(df, i)) for i, v in zip(rows, values, strict=False)]
    if name == "key_unique":
        keys = df.loc[rows, "key"].value_counts(sort=False) if rows else pd.Series(dtype=int)
        items = [f"{k!r} ×{c}" for k, c in keys.items()]
    shown = ", ".join(items[:_SHOWN]) + (", …" if len(items) > _SHOWN else "")
    return CheckResult(name, False, f"{count} of {total} {what}: {shown}", limit(items))


def _who(df: pd.DataFrame, i: Any) -> str:
    key = df.at[i, "key"] if i in df.index else None
    return str(key) if isinstance(key, str) and key else f"row {i} (label {df.at[i, 'label']!r})"


# --- dataset-level checks in pandas -----------------------------------------------------------------------


def _counts(df: pd.DataFrame, class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    split = df["split"].astype(object).where(df["split"].notna(), "<missing>").astype(str)
    label = df["label"].astype(object).where(df["label"].notna(), "<missing>").astype(str)
    table = pd.crosstab(split, label) if len(df) else pd.DataFrame()
    splits = list(SPLITS) + sorted(set(table.index) - set(SPLITS))
    classes = list(class_names) + sorted(set(table.columns) - set(class_names))
    return {s: {c: int(table.at[s, c]) if s in table.index and c in table.columns else 0 for c in classes}
            for s in splits}


def _class_checks(counts: dict[str, dict[str, int]], class_names: tuple[str, ...],
                  t: ValidationThresholds) -> list[CheckResult]:
    total = {c: sum(counts[s][c] for s in counts) for c in class_names}
    present = [c for c in class_names if total[c]]
    checks = [CheckResult("classes_present", len(present) >= 2,
                          f"{len(present)} of {len(class_names)} classes have images"
                          + ("" if len(present) >= 2 else " (need at least 2)"), tuple(present))]
    problems = []
    for c in class_names:
        if total[c] < t.min_per_class:
            problems.append(f"class '{c}' has {plural(total[c], 'image')} (need ≥ {t.min_per_class})")
        problems += [f"class '{c}' has 0 images in {s}" for s in ("train", "val") if counts[s][c] < 1]
    checks.append(CheckResult(
        "class_minimum", not problems,
        "; ".join(problems[:_SHOWN]) + ("; …" if len(problems) > _SHOWN else "") if problems else
        f"every class has ≥ {t.min_per_class} images, ≥ 1 in train and ≥ 1 in val", limit(problems)))
    big, small = max(class_names, key=total.__getitem__), min(class_names, key=total.__getitem__)
    ratio = total[big] / total[small] if total[small] else math.inf
    checks.append(CheckResult(
        "class_balance", ratio <= t.max_class_ratio,
        f"largest/smallest class = '{big}' {total[big]} / '{small}' {total[small]} = {ratio:.1f} "
        f"(max {t.max_class_ratio:g})" if total[small] else
        f"class '{small}' has no images (largest: '{big}' with {total[big]})"))
    return checks


def _groups(df: pd.DataFrame, by: list[str], differ: str | None) -> list[pd.DataFrame]:
    """Groups of rows sharing `by` (non-null) with more than one row, or whose `differ` column varies."""
    rows = df.dropna(subset=by)
    rows = rows[rows.duplicated(subset=by, keep=False)]  # only repeated content can form a group
    if differ is not None:
        rows = rows[rows.groupby(by)[differ].transform(lambda s: s.nunique(dropna=False)) > 1]
    return [g for _, g in rows.groupby(by, sort=True)]


def _cross_split_lines(df: pd.DataFrame) -> list[str]:
    return ["image content in two splits: " + " = ".join(f"{k} ({s})" for k, s in zip(g["key"], g["split"],
                                                                                        strict=True))
            for g in _groups(df, ["sha256"], "split")]


def _label_conflict_lines(df: pd.DataFrame) -> list[str]:
    return ["same image content labelled differently: "
            + " = ".join(f"{k} ('{lab}')" for k, lab in zip(g["key"], g["label"], strict=True))
            for g in _groups(df, ["sha256"], "label")]


def _duplicate_lines(df: pd.DataFrame) -> list[str]:
    return [f"duplicate content in {g['split'].iloc[0]}: " + " = ".join(map(str, g["key"]))
            for g in _groups(df, ["split", "sha256"], None)]


def _label_index_check(df: pd.DataFrame, class_names: tuple[str, ...]) -> CheckResult:
    known = df[df["label"].isin(class_names)]
    want = known["label"].map({c: i for i, c in enumerate(class_names)})
    bad = known[pd.to_numeric(known["label_index"], errors="coerce") != want]
    items = [f"{k}: label '{lab}' has label_index {i!r}, expected {class_names.index(lab)}"
             for k, lab, i in zip(bad["key"], bad["label"], bad["label_index"], strict=True)]
    return listing("label_index_matches", items, "every label_index matches the class order")


def _rejected_check(n: int, rej: pd.DataFrame, t: ValidationThresholds) -> CheckResult:
    from scene.data.dataset import OS_LITTER  # OS litter (.DS_Store, __MACOSX/…) is listed, never counted

    rej = rej[rej["problem"] != OS_LITTER] if "problem" in rej.columns else rej
    r = len(rej)
    frac = r / (n + r) if n + r else 0.0
    items = [f"{k}: {p}" for k, p in zip(rej.get("key", []), rej.get("problem", []), strict=False)]
    return CheckResult("rejected_fraction", frac <= t.max_rejected_fraction,
                       f"{r} of {plural(n + r, 'file')} rejected "
                       f"({frac:.1%}, max {t.max_rejected_fraction:.0%})",
                       limit(items))


def _compare_previous(df: pd.DataFrame, previous: pd.DataFrame) -> tuple[list[str], list[str], int, int]:
    prev = previous.dropna(subset=["sha256"])
    old_keys = set(previous["key"].dropna().astype(str))
    seen = df[df["sha256"].isin(set(prev["sha256"])) & df["key"].notna()]  # content the previous one had
    was_in: dict[str, set[str]] = {}
    old_as: dict[str, list[str]] = {}
    for key, split, sha in zip(prev["key"], prev["split"], prev["sha256"], strict=True):
        was_in.setdefault(sha, set()).add(str(split))
        old_as.setdefault(sha, []).append(str(key))

    def before(sha: str) -> tuple[str, str]:
        return "/".join(sorted(was_in[sha])), ", ".join(sorted(old_as[sha])[:2])

    moved, dups = [], []
    for key, split, sha in zip(seen["key"], seen["split"], seen["sha256"], strict=True):
        if str(split) not in was_in[sha]:
            splits, keys = before(sha)
            moved.append(f"image moved split: {key} is now in {split}, was in {splits} ({keys})")
        if str(key) not in old_keys:
            splits, keys = before(sha)
            dups.append(f"new image {key} duplicates {keys} (already in {splits})")
    new_images = int((~df["sha256"].isin(set(previous["sha256"].dropna()))).sum())
    removed = len(old_keys - set(df["key"].dropna().astype(str)))
    return moved, dups, new_images, removed


def _notes(df: pd.DataFrame) -> tuple[tuple[str, str], ...]:
    if "note" not in df.columns:
        return ()
    notes = df["note"].astype(object).where(df["note"].notna(), "").astype(str).str.strip()
    has = notes != ""
    return tuple((str(k), n) for k, n in zip(df.loc[has, "key"], notes[has], strict=True))
