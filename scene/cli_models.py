"""``scene models``: list, show, promote and roll back versions in the model registry (``scene.registry``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

LIST_COLUMNS = ("", "version", "backbone", "created", "test_f1_weighted", "test_accuracy", "status", "weights")


def _registry() -> tuple[Any, str]:
    """An S3 client and the artifact bucket, from ``Settings.from_env()``."""
    from scene.settings import Settings
    from scene.storage import s3_client

    settings = Settings.from_env()
    return s3_client(settings), settings.artifact_bucket


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[_cell(v) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _list_rows(entries: list[dict[str, Any]], champion_version: str | None) -> list[list[Any]]:
    return [["*" if e["version"] == champion_version else "", e["version"], e["backbone"], e["created"],
             e.get("test_f1_weighted"), e.get("test_accuracy"), e.get("status"),
             "random init" if e.get("random_init") else "pretrained"] for e in entries]


def cmd_list(a: argparse.Namespace) -> None:
    """Print every registered version, the champion marked with ``*``."""
    from scene import registry

    s3, bucket = _registry()
    entries = registry.list_versions(s3, bucket, a.backbone)
    current = registry.champion(s3, bucket)
    if not entries:
        print(f"no registered models in s3://{bucket}/{registry.PREFIX}" + (f" for {a.backbone}" if a.backbone else ""))
        return
    print(table(_list_rows(entries, current and current.get("version")), LIST_COLUMNS))
    print(f"\nchampion: {current['version'] if current else '(none)'}")


def show_text(info: dict[str, Any]) -> str:
    """A version's entry and per-split metrics as text."""
    skip = {"metrics", "is_champion"}
    lines = [f"{k}: {_cell(v)}" for k, v in info.items() if k not in skip]
    lines.append(f"champion: {'yes' if info.get('is_champion') else 'no'}")
    metrics = info.get("metrics", {})
    splits = [s for s in ("train", "val", "test") if isinstance(metrics.get(s), dict)]
    if splits:
        cols = ("split", "n", "accuracy", "f1_weighted", "f1_macro", "collapsed")
        rows = [[s, *(metrics[s].get(c) for c in cols[1:])] for s in splits]
        lines += ["", table(rows, cols)]
    return "\n".join(lines)


def cmd_show(a: argparse.Namespace) -> None:
    """Print one version's registry entry and metrics."""
    from scene import registry

    s3, bucket = _registry()
    print(show_text(registry.show(s3, bucket, a.version)))


def cmd_promote(a: argparse.Namespace) -> None:
    """Make a version the champion by hand."""
    from scene import registry

    s3, bucket = _registry()
    before = registry.champion(s3, bucket)
    doc = registry.promote_version(s3, bucket, a.version, a.reason, force=a.force)
    was = before["version"] if before else "(none)"
    print(f"champion: {doc['version']} (was {was})")


def cmd_rollback(a: argparse.Namespace) -> None:
    """Restore the previous champion."""
    from scene import registry

    s3, bucket = _registry()
    doc = registry.rollback(s3, bucket)
    print(f"champion: {doc['version']} (rolled back from {doc['decision']['champion']})")


def register(sub: Any) -> None:
    """Add ``scene models list|show|promote|rollback`` to the ``scene`` parser."""
    m = sub.add_parser("models", help="the model registry: versions and the champion")
    ms = m.add_subparsers(dest="models_command", required=True)
    ls = ms.add_parser("list", help="registered versions; the champion is marked *")
    ls.add_argument("--backbone", help="only this backbone")
    ls.set_defaults(func=cmd_list)
    sh = ms.add_parser("show", help="one version's entry and metrics")
    sh.add_argument("version", help="a version id from `scene models list`")
    sh.set_defaults(func=cmd_show)
    pr = ms.add_parser("promote", help="make a version the champion by hand")
    pr.add_argument("version", help="a version id from `scene models list`")
    pr.add_argument("--reason", default="manual", help="recorded in champion.json")
    pr.add_argument("--force", action="store_true", help="promote even a collapsed model")
    pr.set_defaults(func=cmd_promote)
    rb = ms.add_parser("rollback", help="restore the previous champion")
    rb.set_defaults(func=cmd_rollback)
