"""Where the test suite's wall time goes, from a timeline written by ``SCENE_TEST_TIMELINE=<file> make test``.

    .venv/bin/python benchmarks/test_timeline.py TIMELINE [--top 25]

Prints, per pytest-xdist worker, its first start, last end, busy seconds and the idle tail (how long it waited for
the other worker at the end), then the modules (and tests/events as one unit, as the scheduler sends it) by total
seconds, with the worker that ran each and when it started relative to the session.
"""

from __future__ import annotations

import argparse

import pandas as pd


def load(path: str) -> pd.DataFrame:
    """One row per test: worker, start, end (epoch seconds), nodeid, module, seconds."""
    t = pd.read_csv(path, sep="\t", names=["worker", "start", "end", "nodeid"])
    t["module"] = t["nodeid"].str.split("::").str[0]
    t.loc[t["module"].str.startswith("tests/events/"), "module"] = "tests/events"
    t["seconds"] = t["end"] - t["start"]
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("timeline")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    t = load(a.timeline)
    t0, t1 = t["start"].min(), t["end"].max()
    workers = t.groupby("worker").agg(first=("start", "min"), last=("end", "max"), busy=("seconds", "sum"),
                                      tests=("nodeid", "count"))
    workers["first"] -= t0
    workers["idle_tail"] = t1 - workers["last"]
    workers["last"] -= t0
    print(f"session span {t1 - t0:.0f} s, {len(t)} tests\n")
    print(workers.round(1).to_string(), "\n")
    modules = t.groupby("module").agg(seconds=("seconds", "sum"), tests=("nodeid", "count"),
                                      worker=("worker", "first"), starts=("start", "min"))
    modules["starts"] -= t0
    print(modules.sort_values("seconds", ascending=False).head(a.top).round(1).to_string())


if __name__ == "__main__":
    main()
