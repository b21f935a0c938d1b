"""Score another model on exactly the test images of a run, for a paired comparison (benchmarks/paired.py).

    .venv/bin/python benchmarks/rescore.py MODEL.keras[#N] RUN/test_predictions.csv OUT.csv

Reads the run's ``test_predictions.csv`` (key, sha256, y_true, ...), scores MODEL (a saved ``model.keras``, e.g. the
``frozen.keras`` a fine-tuning run keeps: the model before fine-tuning) on those images with scene's own scoring path
(``scene.model.predict.predict``) and writes the same columns to OUT. The true labels are the run's. ``#N`` scores
member N alone of an ensemble (``finetune_ensemble``: 0 = the selection network, 1 = the refit one).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(model_path: str, run_csv: str, out_csv: str) -> None:
    import pandas as pd

    from scene.model.network import load, members
    from scene.model.predict import predict

    rows = pd.read_csv(run_csv)
    path, _, member = model_path.partition("#")
    model = load(path)
    if member:
        model = members(model)[int(member)]
    p = predict(model, rows.rename(columns={"y_true": "label_index"}), int(model.input_shape[1]), split="test")
    pred = p.probs.argmax(1)
    out = rows[["key", "sha256", "y_true"]].assign(y_pred=pred, correct=pred == rows["y_true"].to_numpy())
    out.to_csv(out_csv, index=False)
    print(f"{model_path}: {len(out)} images, accuracy {out['correct'].mean():.4f} -> {out_csv}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
