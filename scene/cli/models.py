"""``scene models``: list, show, promote and roll back versions in the model registry (``scene.registry``).

Each dataset (data root URI) has its own champion; ``list`` marks every dataset's champion with ``*``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from scene.cli.common import Renamed, SceneParser, add_json, emit

LIST_COLUMNS = ("", "version", "backbone", "dataset", "created", "test_f1_weighted", "test_accuracy", "status",
                "flags")


def _registry() -> tuple[Any, str]:
    """An S3 client and the artifact bucket, from ``Settings.from_env()``."""
    from scene.data.storage import s3_client
    from scene.settings import Settings

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


def _flags(e: dict[str, Any]) -> str:
    """What keeps a version from automatic promotion, as shown in ``list``."""
    flags = [name for key, name in (("random_init", "random init"), ("synthetic_data", "synthetic data"))
             if e.get(key)]
    return ", ".join(flags) or "—"


def _list_rows(entries: list[dict[str, Any]], champion_versions: set[str]) -> list[list[Any]]:
    return [["*" if e["version"] in champion_versions else "", e["version"], e["backbone"], e.get("dataset") or "—",
             e["created"], e.get("test_f1_weighted"), e.get("test_accuracy"), e.get("status"), _flags(e)]
            for e in entries]


def champions_text(docs: dict[str, dict[str, Any]]) -> str:
    """One line per dataset: its champion version."""
    if not docs:
        return "champion: (none)"
    return "\n".join(f"champion of {data}: {doc['version']}" for data, doc in sorted(docs.items()))


def cmd_list(a: argparse.Namespace) -> None:
    """Print every registered version, each dataset's champion marked with ``*``."""
    from scene import registry

    s3, bucket = _registry()
    entries = registry.list_versions(s3, bucket, a.backbone)
    docs = registry.champions(s3, bucket)
    if a.dataset:
        data = registry.dataset_uri(a.dataset)
        entries = [e for e in entries if e.get("dataset") == data]
        docs = {k: v for k, v in docs.items() if k == data}
    doc = {"versions": [{**e, "champion": e["version"] in {d["version"] for d in docs.values()}} for e in entries],
           "champions": {data: d["version"] for data, d in sorted(docs.items())}}
    if not entries:
        emit(a, doc, f"no registered models in s3://{bucket}/{registry.PREFIX}"
             + (f" for {a.backbone}" if a.backbone else "") + (f" trained on {a.dataset}" if a.dataset else ""))
        return
    emit(a, doc, table(_list_rows(entries, {d["version"] for d in docs.values()}), LIST_COLUMNS)
         + "\n\n" + champions_text(docs))


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
    info = registry.show(s3, bucket, a.version)
    emit(a, info, show_text(info))


def cmd_promote(a: argparse.Namespace) -> None:
    """Make a version its dataset's champion by hand (``--force`` for a collapsed, random-init or synthetic one)."""
    from scene import registry

    s3, bucket = _registry()
    entry = registry.get_version(s3, bucket, a.version)
    before = registry.champion(s3, bucket, dataset=entry["dataset"]) if entry.get("dataset") else None
    doc = registry.promote_version(s3, bucket, a.version, a.reason, force=a.force)
    was = before["version"] if before else "(none)"
    print(f"champion of {doc['data']}: {doc['version']} (was {was})")


def cmd_rollback(a: argparse.Namespace) -> None:
    """Restore a dataset's previous champion."""
    from scene import registry

    s3, bucket = _registry()
    doc = registry.rollback(s3, bucket, dataset=a.dataset)
    print(f"champion of {doc['data']}: {doc['version']} (rolled back from {doc['decision']['champion']})")


def register(sub: Any) -> None:
    """Add ``scene models list|show|promote|rollback`` to the ``scene`` parser."""
    m = sub.add_parser("models", help="the model registry: versions and the champion")
    ms = m.add_subparsers(dest="models_command", required=True, metavar="COMMAND", parser_class=SceneParser)
    ls = ms.add_parser("list", help="registered versions; the champion is marked *")
    ls.add_argument("--backbone", help="only this backbone")
    ls.add_argument("--dataset", help="only versions trained on this data root URI")
    ls.add_argument("--data", action=Renamed, dest="dataset", new="--dataset")
    add_json(ls)
    ls.set_defaults(func=cmd_list)
    sh = ms.add_parser("show", help="one version's entry and metrics")
    sh.add_argument("version", metavar="VERSION", help="a version id from `scene models list`")
    add_json(sh)
    sh.set_defaults(func=cmd_show)
    pr = ms.add_parser("promote", help="make a version the champion of its dataset by hand")
    pr.add_argument("version", metavar="VERSION", help="a version id from `scene models list`")
    pr.add_argument("--reason", default="manual", help="recorded in champion.json")
    pr.add_argument("--force", action="store_true",
                    help="promote even a collapsed, random-init or synthetic-data model (never promoted automatically)")
    pr.set_defaults(func=cmd_promote)
    rb = ms.add_parser("rollback", help="restore a dataset's previous champion")
    rb.add_argument("--dataset", help="the data root URI whose champion to roll back (needed when several have one)")
    rb.add_argument("--data", action=Renamed, dest="dataset", new="--dataset")
    rb.set_defaults(func=cmd_rollback)
