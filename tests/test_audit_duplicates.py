"""Near-duplicate / leakage audit on feature vectors with planted copies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scene.audit.duplicates import audit_duplicates, normalise, similar_pairs, threshold_curve


def photos(n: int = 300, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Distinct 'photos': non-negative pooled-feature-like vectors sharing a common mean (cosines ~0.5-0.8)."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(1.0, 1.0, (n, dim))).astype(np.float32)


def copy_of(v: np.ndarray, rng: np.random.Generator, strength: float = 0.08) -> np.ndarray:
    """A made copy: the original's features perturbed a little (what a resize / re-encode / small crop does)."""
    return np.abs(v + rng.normal(0, strength * np.abs(v).mean(), v.shape)).astype(np.float32)


def rows_for(n: int, splits: list[str], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"key": [f"k{i}" for i in range(n)], "sha256": [f"s{i}" for i in range(n)],
                         "split": splits, "label": labels})


def test_planted_copies_found_above_recall_and_precision_floors() -> None:
    rng = np.random.default_rng(1)
    x = photos()
    originals = rng.choice(len(x), 30, replace=False)
    copies = np.stack([copy_of(x[i], rng) for i in originals])
    allx = np.concatenate([x, copies])
    n = len(allx)
    rows = rows_for(n, ["train"] * n, ["forest"] * n)
    audit = audit_duplicates(allx, rows, threshold=0.97)
    found = {frozenset((int(a[1:]), int(b[1:]))) for a, b in zip(audit.pairs["key_a"], audit.pairs["key_b"],
                                                                 strict=True)}
    truth = {frozenset((int(o), len(x) + k)) for k, o in enumerate(originals)}
    recall = len(found & truth) / len(truth)
    precision = len(found & truth) / max(len(found), 1)
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    assert set(audit.pairs["kind"]) == {"within-class"}


def test_leak_across_train_and_test_blocks_and_other_kinds_warn() -> None:
    rng = np.random.default_rng(2)
    x = photos(40)
    extra = np.stack([copy_of(x[i], rng, 0.02) for i in (0, 1, 2, 3)])
    allx = np.concatenate([x, extra])
    splits = ["train"] * 20 + ["test"] * 20 + ["test", "val", "train", "train"]
    labels = ["sea"] * 44
    labels[43] = "street"  # copy of k3 (train, sea) labelled street: a label conflict
    audit = audit_duplicates(allx, rows_for(44, splits, labels), threshold=0.98)
    kinds = dict(zip(zip(audit.pairs["key_a"], audit.pairs["key_b"], strict=True), audit.pairs["kind"], strict=True))
    assert kinds[("k0", "k40")] == "leak" and kinds[("k1", "k41")] == "cross-split"
    assert kinds[("k2", "k42")] == "within-class" and kinds[("k3", "k43")] == "label-conflict"
    assert audit.leaked_test_images == 1 and audit.blocking  # 1 of 21 test images > 1%
    failures, warnings = audit.messages()
    assert failures and "k40" in failures[0] and len(warnings) == 3
    lenient = audit_duplicates(allx, rows_for(44, splits, labels), threshold=0.98, max_leak_share=0.1)
    assert not lenient.blocking and any("near-copy" in w for w in lenient.messages()[1])


def test_identical_files_are_left_to_the_hash_check() -> None:
    x = photos(5)
    rows = rows_for(6, ["train"] * 3 + ["test"] * 3, ["sea"] * 6)
    rows.loc[5, "sha256"] = "s0"  # the same file twice
    assert audit_duplicates(np.concatenate([x, x[:1]]), rows).pairs.empty


def test_similar_pairs_blockwise_matches_the_full_matrix() -> None:
    x = photos(50, seed=4)
    z = normalise(x)
    s = z @ z.T
    i, j, c = similar_pairs(x, 0.8, block=7)
    want = {(a, b) for a, b in zip(*np.nonzero(np.triu(s >= 0.8, 1)), strict=True)}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want
    assert np.allclose(c, s[i, j])


def test_threshold_curve_and_bad_threshold() -> None:
    curve = threshold_curve(np.array([0.99, 0.97, 0.9]), np.array([0.5, 0.95]), np.array([0.92, 0.96]))
    assert curve["recall"].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert curve["precision"].tolist() == pytest.approx([2 / 3, 1.0])  # 0.95 is a false pair at 0.92 only
    with pytest.raises(ValueError, match="threshold"):
        audit_duplicates(photos(3), rows_for(3, ["train"] * 3, ["sea"] * 3), threshold=1.5)


def test_features_that_cannot_tell_images_apart_warn_instead_of_blocking() -> None:
    rng = np.random.default_rng(5)
    base = photos(1)[0]
    x = np.stack([copy_of(base, rng, 0.01) for _ in range(30)])  # 30 near-identical images (one flat hue each)
    audit = audit_duplicates(x, rows_for(30, ["train"] * 24 + ["test"] * 6, ["sea"] * 30), threshold=0.98)
    assert audit.leak_share == 1.0 and audit.indiscriminate and not audit.blocking
    failures, warnings = audit.messages()
    assert not failures and "do not tell these images apart" in warnings[0]
