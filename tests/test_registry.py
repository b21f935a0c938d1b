"""The promotion rule and the pairing of test predictions (no server; the S3 side is in integration/)."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from scene import cli_models
from scene.registry import Decision, ModelVersion, RegistryError, decide, pair


def _arrays(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness arrays with the given concordant/discordant counts."""
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return np.array(a), np.array(b)


# (name, counts or None for "no champion", collapsed, promote?, reason fragment)
CASES = [
    ("no champion", None, False, True, "no champion"),
    ("no champion but collapsed", None, True, False, "collapsed"),
    ("collapsed though much better", (50, 40, 2, 8), True, False, "collapsed"),
    ("significantly better", (50, 30, 5, 15), False, True, "significantly better"),
    ("better but not significant", (50, 7, 4, 39), False, False, "not significantly"),
    ("tie", (50, 5, 5, 40), False, False, "not better"),
    ("worse", (50, 2, 30, 18), False, False, "not better"),
    ("identical", (60, 0, 0, 40), False, False, "not better"),
]


@pytest.mark.parametrize(("name", "counts", "collapsed", "promote", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, counts: tuple[int, int, int, int] | None, collapsed: bool, promote: bool,
                fragment: str) -> None:
    if counts is None:
        a, b = np.array([True, False, True]), None
    else:
        a, b = _arrays(*counts)
    d = decide(a, b, challenger_collapsed=collapsed, challenger="new", champion=None if b is None else "old")
    assert d.promote is promote, d
    assert fragment in d.reason
    assert d.n_paired == len(a) and d.challenger == "new"
    if counts is not None:
        assert (d.b, d.c) == (counts[1], counts[2])
        assert d.champion_acc == pytest.approx(b.mean()) and d.challenger_acc == pytest.approx(a.mean())
        assert d.p_value is not None and 0 <= d.p_value <= 1
    else:
        assert d.p_value is None and d.champion_acc is None


def test_decide_respects_alpha_and_rejects_bad_alpha() -> None:
    a, b = _arrays(50, 30, 5, 15)  # p ≈ 1.6e-5
    assert decide(a, b, challenger_collapsed=False, alpha=1e-6).promote is False
    with pytest.raises(ValueError, match=r"alpha=1\.5"):
        decide(a, b, challenger_collapsed=False, alpha=1.5)


def test_decide_rejects_arrays_of_different_length() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        decide(np.ones(3, bool), np.ones(4, bool), challenger_collapsed=False)


def test_decision_markdown_and_dict() -> None:
    a, b = _arrays(50, 30, 5, 15)
    d = decide(a, b, challenger_collapsed=False, challenger="resnet50-aaaaaaaaaaaa", champion="vgg16-bbbbbbbbbbbb")
    md = d.markdown()
    assert "**promote**" in md and "resnet50-aaaaaaaaaaaa" in md and "vgg16-bbbbbbbbbbbb" in md and "p = " in md
    assert Decision(**d.to_dict()) == d


def _table(rows: list[tuple[str, str, int, int]]) -> pd.DataFrame:
    """Prediction rows (key, sha256, y_true, y_pred)."""
    df = pd.DataFrame(rows, columns=["key", "sha256", "y_true", "y_pred"])
    df["correct"] = df["y_true"] == df["y_pred"]
    return df


def test_pair_joins_on_sha256_and_ignores_one_sided_images() -> None:
    challenger = _table([("new/a.jpg", "a", 0, 0), ("new/b.jpg", "b", 1, 2), ("new/c.jpg", "c", 2, 2),
                         ("new/only-new.jpg", "n", 3, 3)])
    champion = _table([("old/c.jpg", "c", 2, 1), ("old/a.jpg", "a", 0, 0), ("old/b.jpg", "b", 1, 1),
                       ("old/only-old.jpg", "o", 4, 0)])
    a, b = pair(challenger, champion)
    assert a.dtype == bool and b.dtype == bool
    assert a.tolist() == [True, False, True]  # sorted by sha256: a, b, c
    assert b.tolist() == [True, True, False]


def test_pair_reads_csv_booleans_and_counts_duplicates_once() -> None:
    challenger = _table([("x1", "x", 0, 0), ("x2", "x", 0, 0), ("y", "y", 1, 0)])
    champion = _table([("x", "x", 0, 1), ("y", "y", 1, 1)])
    champion["correct"] = champion["correct"].map({True: "True", False: "False"})
    a, b = pair(challenger, champion)
    assert a.tolist() == [True, False] and b.tolist() == [False, True]


def test_pair_errors_name_the_problem() -> None:
    good = _table([("a", "a", 0, 0)])
    with pytest.raises(RegistryError, match="champion predictions: missing column 'sha256'"):
        pair(good, good.drop(columns=["sha256"]))
    with pytest.raises(RegistryError, match="different labels"):
        pair(good, _table([("a", "a", 3, 3)]))
    with pytest.raises(RegistryError, match="'correct' must be true/false"):
        pair(good, good.assign(correct="maybe"))


def test_model_version_round_trip_and_missing_fields() -> None:
    v = ModelVersion("vgg16", "vgg16-0123456789ab", "s3://b/models/vgg16/vgg16-0123456789ab/",
                     "2025-01-01T00:00:00+00:00", "fp", 0.9, 0.91, False, False, "ok")
    assert ModelVersion.from_dict({**v.to_dict(), "extra": 1}) == v
    with pytest.raises(RegistryError, match="lacks fields"):
        ModelVersion.from_dict({"version": "x"})


def test_cli_parser_and_table() -> None:
    p = argparse.ArgumentParser()
    cli_models.register(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["models", "promote", "vgg16-0123456789ab", "--force"])
    assert a.func is cli_models.cmd_promote and a.force and a.version == "vgg16-0123456789ab"
    assert p.parse_args(["models", "list", "--backbone", "vgg16"]).backbone == "vgg16"
    assert p.parse_args(["models", "rollback"]).func is cli_models.cmd_rollback
    text = cli_models.table([["x", 0.5, None]], ["name", "score", "other"])
    assert text.splitlines()[0].split() == ["name", "score", "other"] and "0.5000" in text and "—" in text
