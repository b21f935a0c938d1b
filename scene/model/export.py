"""The exported inference model a trained folder carries: its ``model.keras`` as OpenVINO IR, checked.

After a backbone is trained and scored, :func:`write` converts the saved model (the same conversion and parity check
as :func:`scene.model.infer.openvino_runner`: outputs within :data:`scene.model.infer.TOLERANCE` of the Keras graph
on real images) and writes ``openvino/model.xml`` + ``model.bin`` beside ``model.keras``, with ``export.json``: the
source file's SHA-256, the image size, the class names and the parity result. Registering the folder lists these
files in the version's ``checksums.json`` like every other. A user can serve the IR with OpenVINO alone (no
TensorFlow); ``scene predict MODEL.xml`` and :func:`load` run it. Without the ``openvino`` package, or when the
export fails its parity check, nothing is written and a warning says why. ``SCENE_EXPORT=none`` skips it (the
conversion costs 5-20 s of CPU per model on 2 cores; the test suite skips it except where it tests it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from scene.data import storage
from scene.errors import ModelLoadError
from scene.model import infer

log = logging.getLogger(__name__)

FOLDER = "openvino"  # beside model.keras
META = "export.json"
SAMPLE_IMAGES = 16  # real images the parity check compares on
ENV = "SCENE_EXPORT"
CHOICES = ("openvino", "none")


def wanted() -> bool:
    """Whether trained models are exported: ``SCENE_EXPORT`` = ``openvino`` (the default) or ``none``."""
    value = os.environ.get(ENV, "").strip().lower() or "openvino"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r} is not an export format; set it to one of {', '.join(CHOICES)}")
    return value == "openvino"


def write(model_path: str | Path, out_dir: str | Path, sample: np.ndarray, class_names: Sequence[str]) -> dict | None:
    """Export ``model_path`` into ``<out_dir>/openvino/``; its ``export.json`` document, or None when not exported.

    ``sample``: a batch of real images as the model takes them (float32 ``(n, size, size, 3)``, 0-255), the parity
    check's input."""
    if not wanted():
        log.info("%s=none: %s carries no exported model", ENV, out_dir)
        return None
    if infer.openvino_version() is None:
        log.info("openvino is not installed: %s carries no exported model (`pip install openvino`)", out_dir)
        return None
    from scene.model.network import load

    model = load(str(model_path))
    # The IR holds f32 weights whatever precision this process runs at: it is checked at f32 (a deployment may
    # compile it at BF16 with SCENE_INFERENCE_PRECISION).
    runner, _ = infer.openvino_runner(model, np.asarray(sample, np.float32), precision="f32")
    stored = infer.stored_export(model, precision="f32")
    parity = infer.stored_parity(stored)
    if runner is None or parity is None or not parity.ok or not (stored / "model.xml").is_file():
        log.warning("%s: no exported model written (the OpenVINO export was refused: %s)", out_dir,
                    asdict(parity) if parity else "its conversion failed")
        return None
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.xml", "model.bin"):
        shutil.copyfile(stored / name, folder / name)
    doc = {"format": "openvino-ir", "openvino": infer.openvino_version(), "model": "model.xml",
           "source": "../model.keras", "source_sha256": storage.sha256_file(Path(model_path)),
           "image_size": int(model.input_shape[1]), "class_names": list(class_names), "parity": asdict(parity)}
    (folder / META).write_text(json.dumps(doc, indent=2))
    log.info("exported %s as OpenVINO IR (relative difference %.2g over %d images) to %s", model_path,
             parity.rel_diff, parity.images, folder)
    return doc


class ExportedModel:
    """An exported IR loaded for prediction: called on a float32 batch, returns the class probabilities."""

    exported = True  # scene.model.infer.predict_batches runs it as it is

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        meta = path.with_name(META)
        try:
            self.meta = json.loads(meta.read_text())
            size, classes = int(self.meta["image_size"]), list(self.meta["class_names"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ModelLoadError(f"{path}: no readable {META} beside it ({err}); pass the openvino/model.xml of a "
                                 "trained folder or registered version, with its export.json") from err
        try:
            compiled = infer.compile_ir(path)
        except Exception as err:
            raise ModelLoadError(f"{path}: OpenVINO cannot load it ({type(err).__name__}: {err})") from err
        self.name, self.class_names = str(path), tuple(classes)
        self.input_shape, self.output_shape = (None, size, size, 3), (None, len(classes))
        self._run = infer.OpenVINOModel(compiled, f"ir:{path}")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)  # float32, contiguous: OpenVINOModel makes it so


def is_exported(path: str | Path) -> bool:
    """``path`` names an exported IR (``.xml``) rather than a ``model.keras``."""
    return str(path).lower().endswith(".xml")


def load(path: str | Path) -> Any:
    """An :class:`ExportedModel` of ``path`` (OpenVINO must be installed)."""
    if infer.openvino_version() is None:
        raise ModelLoadError(f"{path}: an OpenVINO IR needs the openvino package; `pip install openvino`, or pass the "
                             "model.keras beside it")
    if not Path(path).is_file():
        raise ModelLoadError(f"{path}: no such file")
    return ExportedModel(path)
