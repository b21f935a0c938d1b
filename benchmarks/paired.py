"""Paired comparison of two runs on the same test images: exact McNemar (scipy.stats.binomtest).

    .venv/bin/python benchmarks/paired.py BASELINE/test_predictions.csv CHALLENGER/test_predictions.csv

Joins the two files on the image's sha256 (the same photo, wherever it lives) and prints each run's weighted F1
and accuracy on the shared images, b (only the challenger right), c (only the baseline right) and the two-sided
exact McNemar p-value.
"""

from __future__ import annotations

import sys

import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from scene.evaluation.metrics import mcnemar


def main(base_csv: str, new_csv: str) -> None:
    base, new = pd.read_csv(base_csv), pd.read_csv(new_csv)
    both = base.merge(new, on="sha256", suffixes=("_base", "_new"))
    if len(both) != len(base) or len(both) != len(new):
        print(f"warning: {len(base)} and {len(new)} test images, {len(both)} shared; comparing the shared ones")
    if (both["y_true_base"] != both["y_true_new"]).any():
        sys.exit("the two runs disagree on true labels of the same images: not the same test set")
    for tag in ("base", "new"):
        y, p = both[f"y_true_{tag}"], both[f"y_pred_{tag}"]
        print(f"{tag}: {len(both)} images, weighted F1 {f1_score(y, p, average='weighted'):.4f}, "
              f"accuracy {accuracy_score(y, p):.4f}")
    p_value, b, c = mcnemar(both["correct_new"].to_numpy(bool), both["correct_base"].to_numpy(bool))
    print(f"paired: b = {b} (only the challenger right), c = {c} (only the baseline right), "
          f"exact McNemar two-sided p = {p_value:.2g}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
