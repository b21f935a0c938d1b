"""Near-duplicate / leakage audit: image pairs whose feature vectors have cosine similarity ≥ a threshold.

Exact copies share a content hash and therefore a split (:mod:`scene.data.dataset`); resized, re-encoded or slightly
cropped copies do not. Their pooled backbone features stay nearly parallel, so a cosine threshold finds them.
A pair is ``leak`` when one image is in the test split and the other is not (the test score is inflated),
``cross-split`` for train/val pairs, ``label-conflict`` when the two carry different labels in one split, and
``within-class`` otherwise (redundant images). Leakage above ``max_leak_share`` of the test images blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Measured with MobileNetV2 ImageNet features at 150 px on the Intel photos (benchmarks/audit_real.py duplicates):
# of the 35 pairs ≥ 0.95 nearly all are the same photo twice (judged by eye), while below ~0.93 most pairs are
# distinct photos of similar scenes. Precision first, since leakage blocks: made copies are found only when mild
# (JPEG q60 35%, 5% crop 32%, half-size resize 0%); see README "Data audits" for the whole curve.
DEFAULT_THRESHOLD = 0.95
MAX_LEAK_SHARE = 0.01  # leaked test images above this share of the test split block training
# When more than this share of all images has a near-duplicate, the features do not tell the photos apart at this
# threshold (e.g. near-identical frames, or an uninformative network): leakage is then a warning, not a block.
MAX_PAIRED_SHARE = 0.5
COLUMNS = ["kind", "cosine", "key_a", "split_a", "label_a", "key_b", "split_b", "label_b"]


@dataclass(frozen=True)
class DuplicateAudit:
    """Near-duplicate pairs (most similar first) and the verdict on train/test leakage."""

    pairs: pd.DataFrame = field(repr=False)  # COLUMNS
    threshold: float
    test_images: int
    max_leak_share: float = MAX_LEAK_SHARE
    paired_share: float = 0.0  # share of all images that have at least one near-duplicate

    def count(self, kind: str) -> int:
        return int((self.pairs["kind"] == kind).sum())

    @property
    def leaked_test_images(self) -> int:
        """Test images with a near-copy outside the test split."""
        leaks = self.pairs[self.pairs["kind"] == "leak"]
        return len(set(np.where(leaks["split_a"] == "test", leaks["key_a"], leaks["key_b"])))

    @property
    def leak_share(self) -> float:
        return self.leaked_test_images / self.test_images if self.test_images else 0.0

    @property
    def blocking(self) -> bool:
        """Train/test leakage above ``max_leak_share`` of the test images (with features that discriminate)."""
        return self.leak_share > self.max_leak_share and not self.indiscriminate

    @property
    def indiscriminate(self) -> bool:
        """Most images have a near-duplicate: at this threshold the features cannot tell the photos apart."""
        return self.paired_share > MAX_PAIRED_SHARE

    def messages(self) -> tuple[list[str], list[str]]:
        """(blocking failures, warnings) as readable lines."""
        lines = {k: self.count(k) for k in ("leak", "cross-split", "label-conflict", "within-class")}
        leak = (f"{self.leaked_test_images} test images ({self.leak_share:.1%}) have a near-copy outside the test "
                f"split (cosine ≥ {self.threshold:.2f}; limit {self.max_leak_share:.1%}); e.g. "
                + "; ".join(f"{r.key_a} ~ {r.key_b}" for r in self.pairs[self.pairs['kind'] == 'leak'].head(3)
                            .itertuples()) + ". Remove the copies or move them into one split")
        failures = [leak] if self.blocking else []
        warnings = [leak] if lines["leak"] and not self.blocking else []
        if self.indiscriminate:
            warnings.insert(0, f"{self.paired_share:.0%} of the images have a near-duplicate (cosine ≥ "
                               f"{self.threshold:.2f}): the features do not tell these images apart, so leakage is "
                               "reported, not enforced; check the backbone weights or raise the threshold")
        for kind, what in (("cross-split", "train/val pairs"), ("label-conflict", "pairs with different labels"),
                           ("within-class", "pairs within one class")):
            if lines[kind]:
                warnings.append(f"{lines[kind]} near-duplicate {what} (cosine ≥ {self.threshold:.2f})")
        return failures, warnings

    def markdown(self, limit: int = 30) -> str:
        from scene.evaluation.report import markdown_table

        failures, warnings = self.messages()
        head = [f"Near-duplicates (cosine ≥ {self.threshold:.2f}): {len(self.pairs)} pairs — "
                + ", ".join(f"{k} {self.count(k)}" for k in ("leak", "cross-split", "label-conflict", "within-class")),
                ""]
        head += [f"- **BLOCKING**: {m}" for m in failures] + [f"- warning: {m}" for m in warnings]
        if len(self.pairs):
            head += ["", markdown_table(self.pairs.head(limit).round(4))]
        return "\n".join(head)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def similar_pairs(x: np.ndarray, threshold: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs ``(i, j)``, ``i < j``, of rows with cosine ≥ ``threshold``, and their cosines (blockwise)."""
    z = normalise(x)
    ii, jj, cc = [], [], []
    for start in range(0, len(z), block):
        sims = z[start:start + block] @ z[start:].T  # only the upper triangle from this block on
        i, j = np.nonzero(sims >= threshold)
        keep = start + i < start + j
        ii.append(start + i[keep])
        jj.append(start + j[keep])
        cc.append(sims[i[keep], j[keep]])
    if not ii:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(cc)


def _kind(split_a: str, split_b: str, label_a: str, label_b: str) -> str:
    if (split_a == "test") != (split_b == "test"):
        return "leak"
    if split_a != split_b:
        return "cross-split"
    return "label-conflict" if label_a != label_b else "within-class"


def audit_duplicates(x: np.ndarray, rows: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD, *,
                     max_leak_share: float = MAX_LEAK_SHARE) -> DuplicateAudit:
    """Near-duplicate pairs among ``rows`` (features ``x``); identical files (same sha256) are the hash check's."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold}: pass a cosine similarity in (0, 1]")
    if len(rows) != len(x):
        raise ValueError(f"{len(rows)} manifest rows but {len(x)} feature vectors")
    i, j, c = similar_pairs(x, threshold)
    sha = rows["sha256"].to_numpy()
    keep = sha[i] != sha[j]
    i, j, c = i[keep], j[keep], c[keep]
    split = rows["split"].astype(str).to_numpy() if "split" in rows else np.full(len(rows), "")
    label = rows["label"].astype(str).to_numpy() if "label" in rows else np.full(len(rows), "")
    key = rows["key"].to_numpy()
    pairs = pd.DataFrame({
        "kind": [_kind(split[a], split[b], label[a], label[b]) for a, b in zip(i, j, strict=True)],
        "cosine": c.astype(float), "key_a": key[i], "split_a": split[i], "label_a": label[i],
        "key_b": key[j], "split_b": split[j], "label_b": label[j]}, columns=COLUMNS)
    order = {"leak": 0, "label-conflict": 1, "cross-split": 2, "within-class": 3}
    pairs = pairs.sort_values(["kind", "cosine"], key=lambda s: s.map(order) if s.name == "kind" else -s)
    paired = len(np.union1d(i, j)) / len(rows) if len(rows) else 0.0
    return DuplicateAudit(pairs.reset_index(drop=True), threshold, int((split == "test").sum()), max_leak_share, paired)


def threshold_curve(copy_sims: np.ndarray, distinct_sims: np.ndarray,
                    thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Recall (copies found) and precision (flagged pairs that are copies) per threshold.

    ``copy_sims``: cosine of each made copy with its original; ``distinct_sims``: cosines of pairs of distinct
    images (e.g. every pair, or each image with its nearest distinct neighbour).
    """
    thresholds = np.round(np.arange(0.80, 1.0, 0.01), 2) if thresholds is None else thresholds
    rows = []
    for t in thresholds:
        tp = int((copy_sims >= t).sum())
        fp = int((distinct_sims >= t).sum())
        rows.append({"threshold": float(t), "recall": tp / max(len(copy_sims), 1),
                     "precision": tp / (tp + fp) if tp + fp else 1.0, "copies_found": tp, "false_pairs": fp})
    return pd.DataFrame(rows)
