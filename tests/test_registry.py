"""The promotion rule, the pairing of test predictions, challenger selection and dataset keys (no server;
the S3 side is in integration/)."""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd
import pytest
from scipy.stats import binomtest

from scene.cli import models
from scene.registry import (
    Decision,
    ModelVersion,
    RegistryError,
    champion_key,
    dataset_uri,
    decide,
    pair,
)
from scene.registry.rule import GateError, per_class_recall, select_challenger, spent_alpha
from scene.train.experiment import TrainResult


def _table(y_true: list[int], y_pred: list[int], prefix: str = "") -> pd.DataFrame:
    """A prediction table; image i has sha256 ``s<i>``."""
    n = len(y_true)
    df = pd.DataFrame({"key": [f"{prefix}img{i}.jpg" for i in range(n)], "sha256": [f"s{i:05d}" for i in range(n)],
                       "y_true": y_true, "y_pred": y_pred})
    df["correct"] = df["y_true"] == df["y_pred"]
    return df


def _frames(both: int, only_a: int, only_b: int, neither: int, label: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Challenger and champion tables on the same images (all of class ``label``) with the given counts."""
    n = both + only_a + only_b + neither
    wrong = (label + 1) % 6
    a = [label] * (both + only_a) + [wrong] * (only_b + neither)
    b = [label] * both + [wrong] * only_a + [label] * only_b + [wrong] * neither
    return _table([label] * n, a, "new/"), _table([label] * n, b, "old/")


# (name, counts or None for "no champion", collapsed, alpha, promote?, reason fragment)
CASES = [
    ("no champion", None, False, 0.05, True, "no champion yet"),
    ("no champion but collapsed", None, True, 0.05, False, "collapsed"),
    ("collapsed though much better", (50, 40, 2, 8), True, 0.05, False, "collapsed"),
    ("significantly better", (50, 30, 5, 15), False, 0.05, True, "significantly better"),
    ("one-sided only: b=14 c=5 at 0.05", (50, 14, 5, 31), False, 0.05, True, "one-sided p=0.03178 < 0.05"),
    ("one-sided only: b=15 c=5 at 0.03", (50, 15, 5, 30), False, 0.03, True, "one-sided p=0.02069 < 0.03"),
    ("b=14 c=5 at 0.03", (50, 14, 5, 31), False, 0.03, False, "not significantly (one-sided p=0.03178 >= 0.03)"),
    ("better but not significant", (50, 7, 4, 39), False, 0.05, False, "not significantly"),
    ("tie", (50, 5, 5, 40), False, 0.05, False, "not better"),
    ("worse", (50, 2, 30, 18), False, 0.05, False, "not better"),
    ("identical", (60, 0, 0, 40), False, 0.05, False, "not better"),
]


@pytest.mark.parametrize(("name", "counts", "collapsed", "alpha", "promote", "fragment"), CASES,
                         ids=[c[0] for c in CASES])
def test_decide(name: str, counts: tuple[int, int, int, int] | None, collapsed: bool, alpha: float, promote: bool,
                fragment: str) -> None:
    if counts is None:
        mine, theirs = _table([0, 1, 2], [0, 1, 1]), None
    else:
        mine, theirs = _frames(*counts)
    d = decide(mine, theirs, challenger_collapsed=collapsed, alpha=alpha, challenger="new",
               champion=None if theirs is None else "old")
    assert d.promote is promote, d
    assert fragment in d.reason
    assert d.n_paired == len(mine) and d.challenger == "new" and d.alpha == alpha
    if counts is not None:
        b, c = counts[1], counts[2]
        assert (d.b, d.c) == (b, c)
        assert d.p_value == pytest.approx(binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0)
        assert d.champion_acc == pytest.approx(theirs["correct"].mean())
        assert d.challenger_acc == pytest.approx(mine["correct"].mean())
    else:
        assert d.p_value is None and d.champion_acc is None and d.per_class == []


def test_one_sided_level_discriminates() -> None:
    """b=15, c=5: two-sided p=0.041, one-sided p=0.021 — at alpha 0.03 only the one-sided test promotes."""
    mine, theirs = _frames(50, 15, 5, 30)
    two_sided = binomtest(15, 20, 0.5).pvalue
    assert 0.03 < two_sided < 0.05
    assert decide(mine, theirs, challenger_collapsed=False, alpha=0.03).promote is True
    assert decide(mine, theirs, challenger_collapsed=False, alpha=0.02).promote is False


def _classes(rows: list[tuple[int, int, int, int]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per class: (n, both right, only challenger right, only champion right); the rest both wrong."""
    y, a, b = [], [], []
    for k, (n, both, only_a, only_b) in enumerate(rows):
        wrong = (k + 1) % len(rows)
        y += [k] * n
        a += [k] * (both + only_a) + [wrong] * (n - both - only_a)
        b += [k] * both + [wrong] * only_a + [k] * only_b + [wrong] * (n - both - only_a - only_b)
    return _table(y, a), _table(y, b)


def test_per_class_drop_beyond_margin_blocks_promotion() -> None:
    # class 0: challenger +40 images; class 1 (20 images): challenger loses 2 the champion gets right (-0.10)
    mine, theirs = _classes([(100, 40, 40, 0), (20, 18, 0, 2)])
    d = decide(mine, theirs, challenger_collapsed=False, class_names=["forest", "sea"])
    assert (d.b, d.c) == (40, 2) and d.p_value < 1e-9
    assert d.promote is False and "class recall drops by more than 0.03: sea 1.00 → 0.90" in d.reason
    assert [(r["class"], r["n"], r["ok"]) for r in d.per_class] == [("forest", 100, True), ("sea", 20, False)]
    assert d.per_class[1]["delta"] == pytest.approx(-0.10)
    assert d.per_class[0]["champion_recall"] == pytest.approx(0.40)
    assert d.per_class[0]["challenger_recall"] == pytest.approx(0.80)
    # with a wider margin the same evidence promotes
    assert decide(mine, theirs, challenger_collapsed=False, margin=0.10).promote is True


def test_per_class_drop_within_margin_is_allowed() -> None:
    mine, theirs = _classes([(100, 40, 40, 0), (100, 97, 0, 3)])  # class 1 drops by exactly 0.03
    d = decide(mine, theirs, challenger_collapsed=False)
    assert d.promote is True and all(r["ok"] for r in d.per_class)
    assert d.per_class[1]["delta"] == pytest.approx(-0.03)
    assert decide(mine, theirs, challenger_collapsed=False, margin=0.02).promote is False


@pytest.mark.parametrize(("flags", "fragment"), [
    ({"random_init": True}, "random initialisation"),
    ({"synthetic_data": True}, "generated (synthetic) data"),
    ({"random_init": True, "synthetic_data": True}, "random initialisation (not transfer learning); challenger was"),
])
def test_random_init_and_synthetic_are_never_promoted_automatically(flags: dict[str, bool], fragment: str) -> None:
    first = decide(_table([0, 1], [0, 1]), None, challenger_collapsed=False, **flags)
    assert first.promote is False and fragment in first.reason and "--force" in first.reason
    mine, theirs = _frames(50, 40, 0, 10)
    better = decide(mine, theirs, challenger_collapsed=False, **flags)
    assert better.promote is False and fragment in better.reason
    assert (better.b, better.c) == (40, 0) and better.per_class  # the evidence is still recorded


def test_decide_rejects_bad_levels() -> None:
    mine, theirs = _frames(50, 30, 5, 15)
    assert decide(mine, theirs, challenger_collapsed=False, alpha=1e-6).promote is False
    with pytest.raises(ValueError, match=r"alpha=1\.5"):
        decide(mine, theirs, challenger_collapsed=False, alpha=1.5)
    with pytest.raises(ValueError, match=r"margin=-0\.1"):
        decide(mine, theirs, challenger_collapsed=False, margin=-0.1)


def test_decision_markdown_and_dict() -> None:
    mine, theirs = _classes([(100, 40, 40, 0), (20, 18, 0, 2)])
    d = decide(mine, theirs, challenger_collapsed=False, challenger="resnet50-aaaaaaaaaaaa",
               champion="vgg16-bbbbbbbbbbbb", class_names=["forest", "sea"], dataset="s3://d/x/")
    md = d.markdown()
    assert "**do not promote**" in md and "resnet50-aaaaaaaaaaaa" in md and "vgg16-bbbbbbbbbbbb" in md
    assert "one-sided" in md and "`s3://d/x/`" in md
    assert "| sea | 20 | 1.000 | 0.900 | -0.100 | **no** |" in md
    assert Decision.from_dict(json.loads(json.dumps(d.to_dict()))) == d


def test_pair_joins_on_sha256_and_ignores_one_sided_images() -> None:
    challenger = pd.DataFrame({"key": ["new/a", "new/b", "new/c", "new/n"], "sha256": ["a", "b", "c", "n"],
                               "y_true": [0, 1, 2, 3], "y_pred": [0, 2, 2, 3]})
    champion = pd.DataFrame({"key": ["old/c", "old/a", "old/b", "old/o"], "sha256": ["c", "a", "b", "o"],
                             "y_true": [2, 0, 1, 4], "y_pred": [1, 0, 1, 0]})
    p = pair(challenger, champion)
    assert p.sha256.tolist() == ["a", "b", "c"] and p.y_true.tolist() == [0, 1, 2]
    assert p.challenger_pred.tolist() == [0, 2, 2] and p.champion_pred.tolist() == [0, 1, 1]
    assert p.challenger_correct.tolist() == [True, False, True]
    assert p.champion_correct.tolist() == [True, True, False]


def test_pair_reads_csv_booleans_and_counts_duplicates_once() -> None:
    challenger = _table([0, 0, 1], [0, 0, 0])
    challenger["sha256"] = ["x", "x", "y"]
    champion = _table([0, 1], [1, 1])
    champion["sha256"] = ["x", "y"]
    champion["correct"] = champion["correct"].map({True: "True", False: "False"})
    p = pair(challenger, champion)
    assert p.challenger_correct.tolist() == [True, False] and p.champion_correct.tolist() == [False, True]


def test_pair_errors_name_the_problem() -> None:
    good = _table([0], [0])
    with pytest.raises(GateError, match="champion predictions: missing column 'sha256'"):
        pair(good, good.drop(columns=["sha256"]))
    with pytest.raises(GateError, match="different labels"):
        pair(good, _table([3], [3]))
    with pytest.raises(GateError, match="'correct' must be true/false"):
        pair(good, good.assign(correct="maybe"))
    with pytest.raises(GateError, match="'correct' disagrees with y_true == y_pred"):
        pair(good, good.assign(correct=False))


def test_per_class_recall_table() -> None:
    p = pair(_table([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]), _table([0, 0, 1, 1, 1], [0, 0, 1, 0, 0]))
    rows = per_class_recall(p, class_names=["a", "b"])
    assert [(r["class"], r["index"], r["n"]) for r in rows] == [("a", 0, 2), ("b", 1, 3)]
    assert rows[0]["champion_recall"] == 1.0 and rows[0]["challenger_recall"] == 0.5 and not rows[0]["ok"]
    assert rows[1]["delta"] == pytest.approx(2 / 3 - 1 / 3) and rows[1]["ok"]


def _result(backbone: str, val_f1: float, test_f1: float, status: str = "ok", val_acc: float = 0.5) -> TrainResult:
    return TrainResult(backbone, status, metrics={"val": {"f1_weighted": val_f1, "accuracy": val_acc},
                                                   "test": {"f1_weighted": test_f1, "accuracy": test_f1}})


def test_challenger_is_chosen_on_validation_not_test() -> None:
    results = [_result("vgg16", val_f1=0.80, test_f1=0.95),  # best on test
               _result("resnet50", val_f1=0.90, test_f1=0.85),  # best on validation
               _result("efficientnetb0", val_f1=0.99, test_f1=0.99, status="collapsed"),
               TrainResult("resnet101v2", "failed", "boom")]
    assert select_challenger(results).backbone == "resnet50"
    assert select_challenger([r.to_dict() for r in results])["backbone"] == "resnet50"
    tied = [_result("a", 0.9, 0.1, val_acc=0.7), _result("b", 0.9, 0.9, val_acc=0.8), _result("c", 0.9, 0.9,
                                                                                             val_acc=0.8)]
    assert select_challenger(tied).backbone == "b"  # tie on F1 → accuracy → the earlier one
    assert select_challenger([results[2], results[3]]) is None


def test_model_version_round_trip_and_old_records() -> None:
    v = ModelVersion("vgg16", "vgg16-0123456789ab", "s3://b/models/vgg16/vgg16-0123456789ab/",
                     "2025-01-01T00:00:00+00:00", "fp", 0.9, 0.91, False, False, "ok", "s3://d/demo/", True)
    assert ModelVersion.from_dict({**v.to_dict(), "extra": 1}) == v
    assert v.flags == ["trained on synthetic data"]
    old = {k: val for k, val in v.to_dict().items() if k not in ("dataset", "synthetic_data")}
    assert ModelVersion.from_dict(old).dataset == "" and ModelVersion.from_dict(old).synthetic_data is False
    with pytest.raises(RegistryError, match="lacks fields"):
        ModelVersion.from_dict({"version": "x"})


def test_dataset_uri_and_champion_key() -> None:
    assert dataset_uri("s3://scene-data/datasets/demo") == "s3://scene-data/datasets/demo/"
    assert dataset_uri(" s3://scene-data/datasets/demo/ ") == "s3://scene-data/datasets/demo/"
    assert dataset_uri("/tmp/x/../data") == "/tmp/data/"
    with pytest.raises(RegistryError, match="empty data root"):
        dataset_uri("  ")
    demo = champion_key("s3://scene-data/datasets/demo")
    assert demo == champion_key("s3://scene-data/datasets/demo/")
    assert demo.startswith("models/champions/scene-data-datasets-demo-") and demo.endswith(".json")
    others = {champion_key(u) for u in ("s3://scene-data/datasets/demo2/", "s3://scene-data/datasets/Demo/",
                                        "s3://scene_data/datasets/demo/", "/srv/datasets/demo/")}
    assert demo not in others and len(others) == 4
    assert champion_key("s3://b/" + "x" * 300, prefix="reg").startswith("reg/champions/")
    assert all(len(k) < 120 and k.replace("/", "").replace("-", "").replace(".", "").isalnum()
               for k in (*others, demo))


def test_cli_parser_and_table() -> None:
    p = argparse.ArgumentParser()
    models.register(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["models", "promote", "vgg16-0123456789ab", "--force"])
    assert a.func is models.cmd_promote and a.force and a.version == "vgg16-0123456789ab"
    a = p.parse_args(["models", "list", "--backbone", "vgg16", "--dataset", "s3://d/x/"])
    assert a.backbone == "vgg16" and a.dataset == "s3://d/x/"
    a = p.parse_args(["models", "rollback", "--dataset", "s3://d/x/"])
    assert a.func is models.cmd_rollback and a.dataset == "s3://d/x/"
    text = models.table([["x", 0.5, None]], ["name", "score", "other"])
    assert text.splitlines()[0].split() == ["name", "score", "other"] and "0.5000" in text and "—" in text
    assert models.champions_text({"s3://d/b/": {"version": "v2"}, "s3://d/a/": {"version": "v1"}}) == (
        "champion of s3://d/a/: v1\nchampion of s3://d/b/: v2")


def test_different_class_lists_are_refused_naming_both() -> None:
    mine, theirs = _frames(50, 30, 5, 15)
    ours, other = ["forest", "sea"], ["sea", "forest"]  # same names, other order: index 0 means another class
    d = decide(mine, theirs, challenger_collapsed=False, class_names=ours, champion_classes=other)
    assert d.promote is False and str(ours) in d.reason and str(other) in d.reason and d.n_paired == 0
    assert decide(mine, theirs, challenger_collapsed=False, class_names=ours, champion_classes=ours).promote is True
    assert decide(mine, theirs, challenger_collapsed=False, class_names=ours).promote is True  # unknown: no check
    assert decide(mine, None, challenger_collapsed=False, class_names=ours, champion_classes=other).promote is True
    with pytest.raises(GateError, match=r"\['sea', 'forest'\] differ"):
        pair(mine, theirs, challenger_classes=ours, champion_classes=other)


def test_the_level_is_spent_over_the_gates_of_a_test_split() -> None:
    levels = [spent_alpha(0.05, k) for k in range(1, 10_001)]
    assert levels[0] == pytest.approx(0.05 * 6 / math.pi**2) and sum(levels) < 0.05
    assert spent_alpha(0.05, None) == 0.05
    with pytest.raises(ValueError, match="gate_number=0"):
        spent_alpha(0.05, 0)
    mine, theirs = _frames(50, 14, 5, 31)  # one-sided p=0.03178
    first = decide(mine, theirs, challenger_collapsed=False)
    assert first.promote is True and first.gate_number is None and first.alpha_level == 0.05
    second = decide(mine, theirs, challenger_collapsed=False, gate_number=1)  # level 0.0304
    assert second.promote is False and "gate 1 of this test split" in second.reason
    assert (second.gate_number, second.alpha_level) == (1, pytest.approx(0.0304, abs=1e-4))
    assert "gate 1 of this test split" in second.markdown()
    assert Decision.from_dict(second.to_dict()) == second
