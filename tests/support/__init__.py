"""Importable helpers shared by the test packages (no fixtures here; fixtures live in the conftests).

Test modules import from ``tests.support`` only, never from another test module or a conftest.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
