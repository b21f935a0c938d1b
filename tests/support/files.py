"""Local files in tests."""

from __future__ import annotations

from pathlib import Path


def settled_files(root: Path) -> Path:
    """Wait until every file under ``root`` is older than RACY_SECONDS (only then does it get a stat tag)."""
    import time

    from scene.data.dataset import RACY_SECONDS

    newest = max(p.stat().st_ctime for p in root.rglob("*"))
    time.sleep(max(0.0, newest + RACY_SECONDS + 0.05 - time.time()))
    return root
