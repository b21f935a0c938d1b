"""Prediction: class probabilities of a full model over manifest rows, and batch prediction over a folder or
prefix of images (labelled or not) into a CSV."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import keras
import numpy as np
import pandas as pd

from scene.data import images, packs, storage
from scene.metadata import IMAGE_SUFFIXES
from scene.model import infer
from scene.model.pipeline import pixel_batches


@dataclass(frozen=True)
class Predictions:
    """Class probabilities and true labels of one split.

    ``source``: ``saved model`` (the shipped ``model.keras`` end to end, from the image files) or
    ``cached features`` (the head on stored features; proven equal to the saved model by
    :func:`scene.train.fit.all_predictions`).
    ``agreement``: on the test split of a cached run, the share of images where both paths agree.
    """

    split: str
    keys: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    source: str = "saved model"
    agreement: float | None = None


def predict(model: keras.Model, rows: pd.DataFrame, size: int, *, split: str = "", s3: Any = None,
            batch_size: int = 64, progress: Callable[[str, int, int], None] | None = None,
            errors: dict[str, str] | None = None) -> Predictions:
    """Class probabilities of a full model over manifest rows (plain images, no augmentation)."""
    out, done = [], 0
    batches = pixel_batches(rows["key"].tolist(), size, batch_size=batch_size, s3=s3, errors=errors,
                            packed=packs.locations(rows))
    for probs in infer.predict_batches(model, batches, images=len(rows)):  # TensorFlow or OpenVINO
        out.append(probs.astype(np.float64))
        done += len(probs)
        if progress:
            progress(f"predict {split}".strip(), done, len(rows))
    k = model.output_shape[-1]
    probs = np.concatenate(out) if out else np.zeros((0, k))
    y = rows["label_index"].to_numpy() if "label_index" in rows else np.full(len(rows), -1)
    return Predictions(split, rows["key"].tolist(), y, probs)


def list_images(src: str, s3: Any = None, *, check: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Image keys under ``src`` (any depth), and ``(key, problem)`` for files that are not usable images.

    ``check``: decode every image now to find unusable ones (off when the caller decodes them anyway and
    collects the problems then, as :func:`predict_folder` does). Locally, symlinks leaving ``src`` are listed as
    problems, never read.
    """
    keys: list[str] = []
    bad: list[tuple[str, str]] = []
    if storage.parse(src).is_s3:
        listed = list(storage.list_files(src, s3))
    else:
        listed, bad = storage.list_local(src)
    for key, _ in listed:
        name = PurePosixPath(key).name
        if name.startswith(".") or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            bad.append((key, "not an image file"))
            continue
        try:
            if check:
                images.inspect(storage.read_bytes(key, s3))
            keys.append(key)
        except images.ImageProblem as err:
            bad.append((key, str(err)))
    return keys, bad


def predict_folder(model: keras.Model, src: str, out: str, class_names: Sequence[str], *, s3: Any = None,
                   progress: Callable[[str, int, int], None] | None = None) -> tuple[int, int]:
    """Write :func:`predict_frame` to ``out`` as CSV; returns (images predicted, files listed with an error)."""
    df = predict_frame(model, src, class_names, s3=s3, progress=progress)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6f")
    storage.write_bytes(out, buf.getvalue().encode(), s3)
    bad = int((df["error"] != "").sum())
    return len(df) - bad, bad


def predict_frame(model: keras.Model, src: str, class_names: Sequence[str], *, s3: Any = None,
                  progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """``key,label,confidence,p_<class>…,error`` of every file under ``src``: unreadable images and files that
    are not images get a row with their error (and no label)."""
    listed, bad = list_images(src, s3, check=False)
    errors: dict[str, str] = {}  # images that fail to decode while predicting (each is read once)
    p = predict(model, pd.DataFrame({"key": listed}), int(model.input_shape[1]), split="images", s3=s3,
                progress=progress, errors=errors)
    ok = np.array([k not in errors for k in listed], bool)
    keys = [k for k in listed if k not in errors]
    p = Predictions(p.split, keys, p.y_true[ok], p.probs[ok])
    bad += [(k, errors[k]) for k in listed if k in errors]
    idx = p.probs.argmax(1) if len(keys) else np.zeros(0, int)
    df = pd.DataFrame({"key": keys, "label": [class_names[i] for i in idx],
                       "confidence": p.probs.max(1) if len(keys) else []})
    for i, c in enumerate(class_names):
        df[f"p_{c}"] = p.probs[:, i] if len(keys) else []
    df["error"] = ""
    if bad:
        df = pd.concat([df, pd.DataFrame({"key": [k for k, _ in bad], "label": "", "error": [e for _, e in bad]})],
                       ignore_index=True)
    return df


def main(argv: list[str] | None = None) -> int:
    """``python -m scene.model.predict MODEL IMAGE...``: the argmax class of each image as one JSON line (the child
    process of :mod:`scene.registry.smoke`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m scene.model.predict MODEL.keras IMAGE [IMAGE ...]", file=sys.stderr)
        return 2
    from scene.model.network import load

    model = load(args[0])
    size = model.input_shape[1]
    if not isinstance(size, int):
        print(f"{args[0]}: the model's input has no fixed size ({model.input_shape})", file=sys.stderr)
        return 1
    preds = predict(model, pd.DataFrame({"key": args[1:]}), size)
    print(json.dumps({"pred": [int(v) for v in preds.probs.argmax(1)], "size": size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
