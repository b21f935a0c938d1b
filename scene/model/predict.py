"""Prediction: class probabilities of a full model over manifest rows, and batch prediction over a folder or
prefix of images (labelled or not) into a CSV."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
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
    bad: list[tuple[str, str]] = []
    if storage.parse(src).is_s3:
        listed = [key for key, _ in storage.list_files(src, s3)]
    else:
        found, bad = storage.list_local(src)
        listed = [key for key, _ in found]
    keys, problems = screen(listed)
    bad += problems
    if not check:
        return keys, bad
    usable = []
    for key in keys:
        try:
            images.inspect(storage.read_bytes(key, s3))
            usable.append(key)
        except images.ImageProblem as err:
            bad.append((key, str(err)))
    return usable, bad


def screen(listed: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Listed keys split into image files (by name) and ``(key, "not an image file")`` for hidden or other files."""
    keys: list[str] = []
    bad: list[tuple[str, str]] = []
    for key in listed:
        name = PurePosixPath(key).name
        if name.startswith(".") or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
            bad.append((key, "not an image file"))
        else:
            keys.append(key)
    return keys, bad


def columns(class_names: Sequence[str]) -> list[str]:
    return ["key", "label", "confidence", *(f"p_{c}" for c in class_names), "error"]


def frame(keys: Sequence[str], probs: np.ndarray, class_names: Sequence[str],
          problems: Sequence[tuple[str, str]] = ()) -> pd.DataFrame:
    """Rows ``key,label,confidence,p_<class>…,error`` of classified ``keys`` (their ``probs``), then one row per
    ``(key, problem)`` with its error and no label."""
    idx = probs.argmax(1) if len(keys) else np.zeros(0, int)
    data: dict[str, Any] = {"key": list(keys), "label": [class_names[i] for i in idx],
                            "confidence": probs.max(1) if len(keys) else np.zeros(0)}
    for i, c in enumerate(class_names):
        data[f"p_{c}"] = probs[:, i] if len(keys) else np.zeros(0)
    df = pd.DataFrame(data)
    df["error"] = ""
    if problems:
        df = pd.concat([df, pd.DataFrame({"key": [k for k, _ in problems], "label": "",
                                          "error": [e for _, e in problems]})], ignore_index=True)
    return df[columns(class_names)]


def problem_rows(class_names: Sequence[str], problems: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """:func:`frame` rows of files that were not classified, each with its error (none: an empty frame)."""
    return frame([], np.zeros((0, len(class_names))), class_names, problems)


GROUP_IMAGES = 2048  # rows per streamed frame: what prediction holds in memory besides the model and the read-ahead


def frames(model: keras.Model, keys: Sequence[str], class_names: Sequence[str], *, s3: Any = None,
           group: int = GROUP_IMAGES, progress: Callable[[str, int, int], None] | None = None,
           batch_size: int = 64) -> Iterator[pd.DataFrame]:
    """:func:`scene.model.parts.frame` rows of ``keys`` in order, about ``group`` images (whole batches) at a time:
    one pass of the model over every image; each is read once; one that fails to decode gets a row with its error."""
    errors: dict[str, str] = {}  # filled as images are decoded, before their batch reaches the model
    batches = pixel_batches(list(keys), int(model.input_shape[1]), batch_size=batch_size, s3=s3, errors=errors)
    pending: list[np.ndarray] = []
    lo = done = 0

    def flush() -> pd.DataFrame:
        span = keys[lo:done]
        probs = np.concatenate(pending).astype(np.float64)
        ok = np.array([k not in errors for k in span], bool)
        return frame([k for k in span if k not in errors], probs[ok], class_names,
                     [(k, errors[k]) for k in span if k in errors])

    for probs in infer.predict_batches(model, batches, images=len(keys)):  # TensorFlow or OpenVINO
        pending.append(probs)
        done += len(probs)
        if progress:
            progress("predict images", done, len(keys))
        if done - lo >= group:
            yield flush()
            pending, lo = [], done
    if done > lo:
        yield flush()


def predict_frame(model: keras.Model, src: str, class_names: Sequence[str], *, s3: Any = None,
                  progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """``key,label,confidence,p_<class>…,error`` of every file under ``src``: unreadable images and files that
    are not images get a row with their error (and no label)."""
    listed, bad = list_images(src, s3, check=False)
    parts = list(frames(model, listed, class_names, s3=s3, progress=progress))
    parts.append(problem_rows(class_names, bad))
    return pd.concat(parts, ignore_index=True)


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
