"""Benchmark: what great-expectations costs for the manifest's row rules, against pandera and plain pandas.

Measures, on a generated manifest of ``--rows`` rows (6 classes, unique keys and hashes, all rows valid):
- import time of ``great_expectations``, ``pandera.pandas`` and ``pandas`` (a fresh ``python -c "import X"`` less
  ``python -c pass``, median of ``--repeat``; ``python -X importtime -c "import X"`` shows where it goes);
- ``validate_manifest`` (the checkpoint plus the pandas dataset checks) warm, without and with Data Docs;
- the same 11 row rules as plain vectorised pandas, and as a pandera ``DataFrameSchema`` (when pandera imports).

    .venv/bin/python benchmarks/validation.py [--rows 9000] [--repeat 5]

pandera is not a dependency of scene: to include it, install it somewhere and put it on PYTHONPATH, e.g.
``pip install --target /tmp/pandera pandera`` and ``PYTHONPATH=/tmp/pandera``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from scene.data.validation import ValidationThresholds, validate_manifest  # noqa: E402
from scene.metadata import SPLITS  # noqa: E402

CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")


def manifest(rows: int) -> pd.DataFrame:
    """``rows`` valid manifest rows, split 80/10/10."""
    keys = [f"data/{CLASSES[i % 6]}/{i}.jpg" for i in range(rows)]
    return pd.DataFrame({
        "key": keys, "label": [CLASSES[i % 6] for i in range(rows)],
        "label_index": [i % 6 for i in range(rows)],
        "split": ["train" if i // 6 % 10 < 8 else ("val" if i // 6 % 10 == 8 else "test") for i in range(rows)],
        "sha256": [hashlib.sha256(k.encode()).hexdigest() for k in keys],
        "width": 150, "height": 150, "mode": "RGB", "note": ""})


def import_ms(module: str, repeat: int) -> float | None:
    """Median wall time of ``python -c "import <module>"`` less that of ``python -c pass``, ms (fresh interpreters;
    None: it does not import)."""
    def wall(code: str) -> float:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, env=os.environ)
        return time.perf_counter() - start if run.returncode == 0 else math.nan

    base = statistics.median(wall("pass") for _ in range(repeat))
    took = statistics.median(wall(f"import {module}") for _ in range(repeat))
    return None if math.isnan(took) else (took - base) * 1000


def median_s(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pandas_rules(df: pd.DataFrame, t: ValidationThresholds) -> list[bool]:
    """The suite's 11 row rules as plain pandas (what a lighter implementation would run)."""
    return [bool(df["label"].isin(CLASSES).all()), bool(df["split"].isin(SPLITS).all()),
            bool(df["mode"].isin(t.allowed_modes).all()),
            *(bool(df[c].notna().all()) for c in ("key", "label", "split", "sha256")),
            *(bool(df[c].between(t.min_side, t.max_side).all()) for c in ("width", "height")),
            bool(df["key"].is_unique), bool(df["sha256"].str.fullmatch(r"[0-9a-f]{64}").all())]


def pandera_check(df: pd.DataFrame, t: ValidationThresholds) -> Callable[[], object] | None:
    try:
        import pandera.pandas as pa
    except ImportError:
        return None
    schema = pa.DataFrameSchema({
        "key": pa.Column(str, unique=True, nullable=False),
        "label": pa.Column(str, pa.Check.isin(CLASSES), nullable=False),
        "split": pa.Column(str, pa.Check.isin(SPLITS), nullable=False),
        "sha256": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{64}$"), nullable=False),
        "mode": pa.Column(str, pa.Check.isin(t.allowed_modes)),
        "width": pa.Column(int, pa.Check.in_range(t.min_side, t.max_side)),
        "height": pa.Column(int, pa.Check.in_range(t.min_side, t.max_side)),
    })
    return lambda: schema.validate(df, lazy=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=9000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    for module in ("great_expectations", "pandera.pandas", "pandas"):
        ms = import_ms(module, a.repeat)
        print(f"import {module}: " + (f"{ms:.0f} ms" if ms is not None else "not installed"))
    df, t = manifest(a.rows), ValidationThresholds()
    start = time.perf_counter()
    assert validate_manifest(df, None, CLASSES).success
    print(f"first validate_manifest in this process (imports great_expectations): {time.perf_counter() - start:.2f} s")
    print(f"validate_manifest, {a.rows} rows: {median_s(lambda: validate_manifest(df, None, CLASSES), a.repeat):.3f} s")
    with tempfile.TemporaryDirectory() as docs:
        s = median_s(lambda: validate_manifest(df, None, CLASSES, docs_dir=docs), a.repeat)
    print(f"validate_manifest with Data Docs, {a.rows} rows: {s:.3f} s")
    assert all(pandas_rules(df, t))
    print(f"the 11 row rules in plain pandas: {median_s(lambda: pandas_rules(df, t), a.repeat) * 1000:.1f} ms")
    check = pandera_check(df, t)
    if check is not None:
        check()
        print(f"the 11 row rules as a pandera schema: {median_s(check, a.repeat) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
