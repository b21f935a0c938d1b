"""``scene audit labels|duplicates|drift``: the data audits on cached features (see :mod:`scene.audit`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scene.cli.common import (
    CLASSES_HELP,
    Bars,
    CliError,
    SceneParser,
    load_dataset,
    s3_for,
    settings_from_env,
    split_list,
)
from scene.metadata import DEFAULT_IMAGE_SIZE


def _features(a: argparse.Namespace, rows: Any, bars: Any) -> Any:
    """Plain-view features of ``rows`` under the backbone/weights/size the flags name (cached, like ``scene train``)."""
    from scene.audit.source import cached_features
    from scene.train import fit

    settings = settings_from_env()
    uses_mirror = bool(settings.s3_endpoint_url) and a.weights == "imagenet"
    s3 = s3_for(a.data, a.cache, a.weights, "s3://" if uses_mirror else None)
    mirror = f"s3://{settings.artifact_bucket}/{settings.weights_mirror_prefix}" if s3 else None
    cfg = fit.TrainConfig(backbone=a.backbone, weights=a.weights, views=0, image_size=a.image_size, seed=a.seed)
    weights = fit.weights_for(cfg, s3=s3, mirror=mirror)
    return cached_features(rows, cfg, weights, a.cache or settings.feature_cache, s3=s3, progress=bars)


def _dataset(a: argparse.Namespace) -> tuple[Any, Any]:

    bars = Bars()
    ds = load_dataset(a.data, a.test, a.classes, bars)
    if ds.manifest.empty:
        raise CliError(f"{a.data}: no usable images to audit")
    return ds, bars


def _out(a: argparse.Namespace) -> Path:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_labels(a: argparse.Namespace) -> None:
    from scene.audit.labels import audit_labels, write_html

    ds, bars = _dataset(a)
    x = _features(a, ds.manifest, bars)
    audit = audit_labels(x, ds.manifest, ds.class_names, folds=a.folds, seed=a.seed)
    out = _out(a)
    audit.issues.to_csv(out / "label_issues.csv", index=False)
    audit.pairs().to_csv(out / "label_pairs.csv", index=False)
    (out / "label_issues.md").write_text(audit.markdown())
    write_html(str(out / "label_issues.html"), audit, s3_for(a.data))
    for r in audit.issues.itertuples():
        print(f"{r.key}\t{r.label}\t->\t{r.suggested}\t{r.quality:.3f}")
    print(f"{audit.flagged} of {audit.audited} images look mislabelled; wrote {out / 'label_issues.csv'}",
          file=sys.stderr)


def cmd_duplicates(a: argparse.Namespace) -> None:
    from scene.audit.duplicates import DEFAULT_THRESHOLD, MAX_LEAK_SHARE, audit_duplicates

    ds, bars = _dataset(a)
    x = _features(a, ds.manifest, bars)
    audit = audit_duplicates(x, ds.manifest, DEFAULT_THRESHOLD if a.threshold is None else a.threshold,
                             max_leak_share=MAX_LEAK_SHARE if a.max_leak_share is None else a.max_leak_share)
    out = _out(a)
    audit.pairs.to_csv(out / "near_duplicates.csv", index=False)
    (out / "near_duplicates.md").write_text(audit.markdown())
    for r in audit.pairs.itertuples():
        print(f"{r.kind}\t{r.cosine:.4f}\t{r.key_a}\t{r.key_b}")
    failures, warnings = audit.messages()
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{len(audit.pairs)} near-duplicate pairs; wrote {out / 'near_duplicates.csv'}", file=sys.stderr)
    if failures:
        raise CliError("near-duplicate leakage between train and test:\n  " + "\n  ".join(failures))


def cmd_drift(a: argparse.Namespace) -> None:
    """New images (``NEW``) vs the labelled reference data (``DATA``), under the backbone the flags name."""
    from scene.audit import drift
    from scene.audit.labels import linear_head, out_of_fold_probs
    from scene.audit.source import image_rows

    ds, bars = _dataset(a)
    ref_rows = ds.split("train")
    new_rows = image_rows(a.new, s3=s3_for(a.new), limit=a.max_images, seed=a.seed)
    if len(new_rows) < 2:
        raise CliError(f"{a.new}: {len(new_rows)} readable images; drift needs at least 2 (NEW: the new images)")
    x_ref = _features(a, ref_rows, bars)
    x_new = _features(a, new_rows, bars)
    y = ref_rows["label_index"].to_numpy().astype(int)
    k = len(ds.class_names)
    ref_pred = out_of_fold_probs(x_ref, y, k, folds=min(5, int(min(c for c in _counts(y, k) if c))),
                                 seed=a.seed).argmax(1)
    ref = drift.fit_reference(x_ref, ref_pred, ds.class_names, components=a.components)
    result = drift.compare(ref, x_new, linear_head().fit(x_ref, y).predict(x_new),
                           alpha=drift.ALPHA if a.alpha is None else a.alpha)
    out = _out(a)
    (out / "drift.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out / "drift.md").write_text(result.markdown())
    print(result.markdown())
    if result.drifted and a.fail_on_drift:
        raise CliError("drift: " + "; ".join(result.reasons))


def _counts(y: Any, k: int) -> list[int]:
    import numpy as np

    return np.bincount(y, minlength=k).tolist()


def _common(p: SceneParser) -> None:
    """The data and feature flags ``scene train`` has."""
    p.positional("DATA", "--data", help="folder or s3:// URI of class folders (or the Kaggle archive)")
    p.add_argument("--test", help="separate test set (default: seg_test of the archive, else a 20%% hold-out)")
    p.add_argument("--backbone", required=True, help="the backbone whose features are audited")
    p.add_argument("--weights", default="imagenet", help="imagenet | none | PATH or s3:// URI to .weights.h5")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE)
    p.add_argument("--cache", help="feature cache folder or s3:// URI (default from settings)")
    p.add_argument("--classes", type=split_list, help=CLASSES_HELP)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True, help="folder for the audit's CSV and markdown")


def register(sub: Any) -> None:
    """Add ``scene audit …`` to the top-level subparsers."""
    # the defaults live in scene.audit.* (numpy/scipy/pandas): filled in by the commands, so --help stays fast
    # (tests/test_cli_conventions.py checks the numbers the help states against them)
    audit = sub.add_parser("audit", help="data audits: label issues, near-duplicates, drift")
    cmds = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND", parser_class=SceneParser)
    lab = cmds.add_parser("labels", help="likely mislabelled images (confident learning, out-of-fold)")
    _common(lab)
    lab.add_argument("--folds", type=int, default=5)
    lab.set_defaults(func=cmd_labels)
    dup = cmds.add_parser("duplicates", help="near-duplicate pairs across splits (leakage) and within classes")
    _common(dup)
    dup.add_argument("--threshold", type=float, help="cosine similarity of a pair (default 0.95)")
    dup.add_argument("--max-leak-share", type=float, help="fail when more than this share of test images has a "
                     "near-copy outside test (default 0.01)")
    dup.set_defaults(func=cmd_duplicates)
    dr = cmds.add_parser("drift", help="do new images look like the reference data? (features + class mix)")
    _common(dr)
    dr.positional("NEW", "--new", help="folder or s3:// URI of the new images (labels not needed)")
    dr.add_argument("--max-images", type=int, default=1000, help="sample at most this many new images")
    dr.add_argument("--components", type=int, default=8)
    dr.add_argument("--alpha", type=float, help="significance level (default 0.01)")
    dr.add_argument("--fail-on-drift", action="store_true", help="exit with status 1 when drift is found")
    dr.set_defaults(func=cmd_drift)
