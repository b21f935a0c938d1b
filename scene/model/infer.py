"""The inference runtime of every frozen forward pass: TensorFlow, or the same Keras graph run by OpenVINO on CPU.

``SCENE_INFERENCE_RUNTIME`` chooses: ``auto`` (the default: OpenVINO when it is installed, the machine has no GPU
and the Keras dtype policy is ``float32``; else TensorFlow), ``tensorflow`` or ``openvino``. OpenVINO runs at f32
(``INFERENCE_PRECISION_HINT``) unless ``SCENE_INFERENCE_PRECISION=bf16`` asks for BF16 (on CPUs with BF16 support;
~5e-2 off, ~1.9x faster on AVX-512-BF16/AMX: its accuracy is measured in docs/inference.md). Batches run in slices
of :data:`SLICE` images (faster than whole batches of 64 on this model class: the activations stay in cache).

A model is converted (:func:`export`: ``openvino.convert_model`` of the Keras model) the first time its exact
content is used, and its outputs are compared with the Keras graph's on the first batch of real images it is asked to
score (:func:`parity`): a relative difference above :data:`TOLERANCE` refuses the export with a warning and the
pass runs on TensorFlow. The converted model and its parity result are kept on disk under
``<keras home>/scene-inference/<key>/``, ``key`` being a hash of everything that changes the output (architecture,
weights, custom layers' source, input shape, precision, OpenVINO and Keras versions), so no later process converts
or checks it again. The runtime and its precision join the feature-cache namespace (:func:`cache_tag`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ENV = "SCENE_INFERENCE_RUNTIME"
CHOICES = ("auto", "tensorflow", "openvino")
TOLERANCE = 1e-4  # max |openvino - keras| / max |keras| on the parity batch, at f32
PRECISION_ENV = "SCENE_INFERENCE_PRECISION"
PRECISIONS = ("f32", "bf16")
PRECISION = "f32"  # the default
# At BF16 the check only catches a broken graph (one without its preprocessing is off by far more than 1): BF16's
# own rounding moved MobileNetV2's features by 0.05-0.08 and a classifier's probabilities by 0.05-0.16 (relative, 64
# Intel photos); what BF16 does to accuracy is measured, not assumed (docs/inference.md).
TOLERANCES = {"f32": TOLERANCE, "bf16": 0.5}
# OpenVINO runs a batch in slices of this many images: MobileNetV2 at 150 px, f32, 2 threads, 600 photos, 2 rounds:
# slices of 1/4/8/16/64 ran 493/678/741/661/573 img/s (AVX-512 Xeon; benchmarks/extraction.py --raw reports it).
SLICE = 8
# Under auto, a model used for fewer images than this stays on TensorFlow unless an export is already loaded: its
# first use costs 4-12 s (conversion, compilation, parity check; MobileNetV2 at 48-96 px on 2 shared cores) and
# OpenVINO saves ~1-2 ms per image there (docs/inference.md).
CONVERT_MIN_IMAGES = 2000


class RuntimeChoiceError(ValueError):
    """``SCENE_INFERENCE_RUNTIME`` names no runtime, or one that is not installed."""


def requested(env: dict[str, str] | None = None) -> str:
    """The runtime asked for by ``SCENE_INFERENCE_RUNTIME`` (``auto`` when unset)."""
    value = (env if env is not None else os.environ).get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise RuntimeChoiceError(f"{ENV}={value!r} is not an inference runtime; set it to one of {', '.join(CHOICES)}")
    return value


_TELEMETRY_LOCK = threading.Lock()


def requested_precision(env: dict[str, str] | None = None) -> str:
    """The OpenVINO precision asked for by ``SCENE_INFERENCE_PRECISION``: ``f32`` (default) or ``bf16``."""
    value = (env if env is not None else os.environ).get(PRECISION_ENV, "").strip().lower() or PRECISION
    if value not in PRECISIONS:
        raise RuntimeChoiceError(f"{PRECISION_ENV}={value!r} is not an inference precision; set it to one of "
                                 f"{', '.join(PRECISIONS)}")
    return value


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in BF16 on this machine (AVX-512-BF16 or AMX)."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


_WARNED: set[str] = set()


def effective_precision(env: dict[str, str] | None = None) -> str:
    """The precision OpenVINO runs at: the one asked for, except ``bf16`` on a CPU without BF16 (a warning; f32)."""
    asked = requested_precision(env)
    if asked == "bf16" and not cpu_has_bf16():
        if "bf16" not in _WARNED:
            _WARNED.add("bf16")
            log.warning("%s=bf16 but this CPU has no BF16 support (OpenVINO: %s); running at f32", PRECISION_ENV,
                        ", ".join(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
        return "f32"
    return asked


def _openvino() -> Any:
    """The ``openvino`` module. Importing it sends a usage event (``openvino-telemetry``, on unless opted out under
    ``~/intel``), so scene imports it the first time with that package hidden: OpenVINO then uses its own no-op
    stand-in, as it does when the package is not installed."""
    if "openvino" not in sys.modules:
        with _TELEMETRY_LOCK:
            saved = sys.modules.get("openvino_telemetry")
            sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # its import raises ImportError
            try:
                import openvino  # noqa: F401
            finally:
                if saved is None:
                    sys.modules.pop("openvino_telemetry", None)
                else:
                    sys.modules["openvino_telemetry"] = saved
    return sys.modules["openvino"]


def openvino_version() -> str | None:
    """OpenVINO's release (``2026.4.1``), or None when it is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return None
    ov = _openvino()
    return ov.get_version().split("-", 1)[0]


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def selected(precision: str | None = None, env: dict[str, str] | None = None) -> str:
    """``tensorflow`` or ``openvino``: what a forward pass under the Keras dtype policy ``precision`` (default: the
    global one) runs on. An explicit ``openvino`` that is not installed is an error naming the variable."""
    choice = requested(env)
    bf16 = requested_precision(env) == "bf16"
    if choice == "tensorflow":
        if bf16:
            raise RuntimeChoiceError(f"{PRECISION_ENV}=bf16 runs on OpenVINO but {ENV}=tensorflow; unset one of them")
        return choice
    if openvino_version() is None:
        if choice == "openvino" or bf16:
            raise RuntimeChoiceError(f"{ENV}={choice}{' with ' + PRECISION_ENV + '=bf16' if bf16 else ''} needs the "
                                     f"openvino package, which is not installed; `pip install openvino`, or set "
                                     f"{ENV}=tensorflow{' and unset ' + PRECISION_ENV if bf16 else ''}")
        return "tensorflow"
    if choice == "auto":  # a GPU runs TensorFlow; so does a reduced Keras policy unless BF16 was asked of OpenVINO
        import keras

        policy = precision or keras.mixed_precision.global_policy().name
        if _has_gpu() or (policy != "float32" and not bf16):
            return "tensorflow"
    return "openvino"


def cache_tag(precision: str | None = None, env: dict[str, str] | None = None) -> str:
    """The runtime's part of a feature-cache namespace: ``tf``, or ``ov<version>-f32`` / ``-bf16``."""
    if selected(precision, env) == "tensorflow":
        return "tf"
    return f"ov{openvino_version()}-{effective_precision(env)}"


@dataclass(frozen=True)
class Parity:
    """How an export's outputs compare with the Keras graph's on one batch."""

    ok: bool
    rel_diff: float  # max |export - keras| / max |keras|
    images: int
    tolerance: float = TOLERANCE
    openvino: str = ""
    precision: str = PRECISION
    checked_at: float = 0.0


def relative_difference(reference: np.ndarray, candidate: np.ndarray) -> float:
    """max |candidate - reference| / max |reference| (inf when the shapes differ)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        return float("inf")
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    diff = float(np.abs(candidate - reference).max()) if reference.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _custom_sources(model: Any) -> list[str]:
    """Source files of the model's layer classes that are not Keras' own (their code changes outputs too)."""
    files = set()

    def walk(layer: Any) -> None:
        module = type(layer).__module__
        if not module.startswith("keras"):
            with contextlib.suppress(TypeError, OSError):
                files.add(inspect.getsourcefile(type(layer)) or "")
        for sub in getattr(layer, "layers", []) or []:
            walk(sub)

    walk(model)
    return sorted(f for f in files if f)


_ARCHITECTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its Keras JSON (fixed once built)


def model_key(model: Any, precision: str = PRECISION) -> str:
    """A hash of everything that changes a model's outputs under OpenVINO. Called on every use (weights trained since
    the last call make another key): ~25 ms for MobileNetV2, the architecture's JSON kept per model object."""
    import keras

    arch = _ARCHITECTURES.get(model)
    if arch is None:
        arch = _ARCHITECTURES[model] = model.to_json()
    h = hashlib.sha256()
    h.update(f"{arch}|{model.input_shape}|{precision}|tolerance{TOLERANCES[precision]}"
             f"|ov{openvino_version()}|keras{keras.__version__}".encode())  # a stored verdict holds for its tolerance
    for path in _custom_sources(model):
        h.update(Path(path).read_bytes())
    for w in model.get_weights():
        h.update(memoryview(np.ascontiguousarray(w)).cast("B"))
    return h.hexdigest()[:24]


def cache_root() -> Path:
    """Where converted models and their parity results live (``<keras home>/scene-inference``)."""
    from scene.model.backbones import keras_cache_dir

    return keras_cache_dir().parent / "scene-inference"


def export(model: Any) -> Any:
    """The Keras model as an OpenVINO model (``openvino.convert_model``), its batch dimension open."""
    import warnings

    ov = _openvino()
    with _no_telemetry(), warnings.catch_warnings():  # Keras notes that the tracer passes its one input as a list
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
        return ov.convert_model(model, input=[(-1, *model.input_shape[1:])])


@contextlib.contextmanager
def _no_telemetry() -> Iterator[None]:
    """OpenVINO's converter sends usage events when ``openvino`` was imported before :func:`_openvino` (elsewhere);
    while this is active its modules use OpenVINO's own no-op stand-in instead."""
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils, utils

    modules = (convert_impl, telemetry_utils, utils)
    with _TELEMETRY_LOCK:
        saved = [m.tm for m in modules]
        for m in modules:
            m.tm = telemetry_stub
        try:
            yield
        finally:
            for m, tm in zip(modules, saved, strict=True):
                m.tm = tm


def _compile(ov_model: Any, precision: str = PRECISION) -> Any:
    ov = _openvino()
    from scene.model import runtime

    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": runtime.thread_plan().intra_op}
    return ov.Core().compile_model(ov_model, "CPU", config)


class OpenVINOModel:
    """A compiled OpenVINO model called like the Keras one on float32 batches (one infer request per thread)."""

    def __init__(self, compiled: Any, key: str = "", slice_size: int = SLICE) -> None:
        self.compiled = compiled
        self.key = key
        self.slice = slice_size
        self._local = threading.local()

    def __call__(self, batch: Any) -> np.ndarray:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        # the request reads the slices in place (they are not changed while it runs) and its output buffer, reused
        # by the next call, is copied out
        x, n = np.ascontiguousarray(np.asarray(batch), np.float32), self.slice
        out: np.ndarray | None = None
        for i in range(0, len(x), n):
            y = req.infer({0: x[i:i + n]}, share_inputs=True)[0]
            if out is None:
                out = np.empty((len(x), *y.shape[1:]), np.float32)
            out[i:i + len(y)] = y
        return out if out is not None else np.array(req.infer({0: x})[0], np.float32)  # an empty batch


def parity(model: Any, candidate: Callable[[np.ndarray], np.ndarray], sample: np.ndarray,
           reference: np.ndarray | None = None, precision: str = PRECISION) -> tuple[Parity, np.ndarray]:
    """Compare ``candidate`` (running at ``precision``) with the Keras graph on ``sample``; (the result, the Keras
    outputs)."""
    from scene.model.pipeline import compiled

    if reference is None:
        reference = np.asarray(compiled(model)(sample), np.float32)
    diff = relative_difference(reference, candidate(sample))
    tolerance = TOLERANCES[precision]
    return Parity(diff <= tolerance, diff, len(sample), tolerance, openvino=openvino_version() or "",
                  precision=precision, checked_at=time.time()), reference


_LOADED: OrderedDict[str, OpenVINOModel | None] = OrderedDict()  # key -> runner (None: refused) in this process
_LOADED_MAX = 8
_LOCK = threading.Lock()
_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {precision: its last model_key} (a hint)


def _remember(key: str, runner: OpenVINOModel | None) -> OpenVINOModel | None:
    with _LOCK:
        _LOADED[key] = runner
        _LOADED.move_to_end(key)
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return runner


def _store(folder: Path, ov_model: Any, result: Parity) -> None:
    """Write the converted model and its parity result into ``folder`` whole (a temporary folder renamed)."""
    ov = _openvino()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as err:
        log.warning("cannot store the OpenVINO export in %s (%s); this process converts it again next time", folder,
                    err)
        return
    try:
        if result.ok:
            ov.save_model(ov_model, tmp / "model.xml", compress_to_fp16=False)
        (tmp / "parity.json").write_text(json.dumps(asdict(result), indent=1))
        os.replace(tmp, folder)
    except OSError:  # another process stored it first (or the folder is read-only): this process still has its copy
        shutil.rmtree(tmp, ignore_errors=True)


def stored_parity(folder: Path) -> Parity | None:
    """The parity result stored in ``folder``, or None when there is none (or it does not load)."""
    try:
        return Parity(**json.loads((folder / "parity.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def stored_export(model: Any, root: Path | None = None, precision: str | None = None) -> Path:
    """The folder where ``model``'s export and parity result at ``precision`` (default: the effective one) are
    kept (its key from the last :func:`openvino_runner` call on this object at that precision, else hashed now)."""
    precision = precision or effective_precision()
    return (root or cache_root()) / (_KEYS.get(model, {}).get(precision) or model_key(model, precision))


def compile_ir(path: str | Path) -> Any:
    """An OpenVINO IR file (``model.xml`` with its ``.bin``) compiled for this machine's CPU at the effective
    precision (:func:`effective_precision`: f32 unless ``SCENE_INFERENCE_PRECISION=bf16``)."""
    return _compile(_openvino().Core().read_model(Path(path)), effective_precision())


def openvino_runner(model: Any, sample: np.ndarray, *, exporter: Callable[[Any], Any] = export,
                    root: Path | None = None, precision: str | None = None
                    ) -> tuple[OpenVINOModel | None, np.ndarray | None]:
    """The model on OpenVINO at ``precision`` (default: :func:`effective_precision`), or None when its export failed
    parity (a warning says so); plus the Keras outputs on ``sample`` when the check ran now (the caller may use them
    for that batch).

    The first use of a model's content converts it with ``exporter`` and checks it on ``sample``; later uses (this
    process or another one) read the stored result and model.
    """
    precision = precision or effective_precision()
    key = model_key(model, precision)  # hashed on every call: weights trained since then make another key
    _KEYS.setdefault(model, {})[precision] = key
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key], None
    folder = (root or cache_root()) / key
    result = stored_parity(folder)
    if result is not None and not result.ok:
        log.warning("OpenVINO export of %s failed its parity check before (relative difference %.2g > %g, %s); "
                    "running it on TensorFlow", model.name, result.rel_diff, result.tolerance, folder)
        return _remember(key, None), None
    if result is not None:
        try:
            ov = _openvino()
            return _remember(key, OpenVINOModel(_compile(ov.Core().read_model(folder / "model.xml"), precision),
                                                key)), None
        except Exception as err:  # a damaged stored model: convert and check again
            log.warning("stored OpenVINO model %s is unusable (%s); converting again", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
    try:
        ov_model = exporter(model)
        runner = OpenVINOModel(_compile(ov_model, precision), key)
        result, reference = parity(model, runner, sample, precision=precision)
    except Exception as err:  # a graph OpenVINO cannot convert or compile: TensorFlow runs it
        log.warning("OpenVINO cannot run %s (%s: %s); running it on TensorFlow", model.name, type(err).__name__, err)
        return _remember(key, None), None
    _store(folder, ov_model, result)
    if not result.ok:
        log.warning("OpenVINO export of %s refused: its outputs differ from the Keras graph's by %.2g (relative, "
                    "over %d images; at most %g allowed at %s); running it on TensorFlow", model.name, result.rel_diff,
                    result.images, result.tolerance, precision)
        return _remember(key, None), reference
    log.info("OpenVINO export of %s checked at %s: relative difference %.2g over %d images", model.name, precision,
             result.rel_diff, result.images)
    return _remember(key, runner), reference


def predict_batches(model: Any, batches: Iterable[np.ndarray], transform: Callable[[np.ndarray], Any] | None = None,
                    *, runtime: str | None = None, images: int | None = None) -> Iterator[np.ndarray]:
    """The model's float32 outputs over ``batches`` (``transform`` applied first) on the selected runtime
    (:func:`selected`, or ``runtime``). On OpenVINO, the first batch is the parity sample of a new export.

    ``images``: how many images the batches hold, when known. Under ``auto``, a model not yet exported in this
    process runs on TensorFlow for fewer than :data:`CONVERT_MIN_IMAGES` (its conversion would cost more than it
    saves); an explicit ``openvino`` always converts.
    """
    from scene.model import pipeline

    if getattr(model, "exported", False):  # an exported IR (scene.model.export.ExportedModel) runs itself
        for batch in batches:
            yield model(transform(batch) if transform is not None else batch)
        return
    choice = runtime or selected()
    if (choice == "openvino" and runtime is None and requested() == "auto" and requested_precision() == "f32"
            and images is not None and images < CONVERT_MIN_IMAGES
            and _LOADED.get(_KEYS.get(model, {}).get("f32", "")) is None):
        choice = "tensorflow"  # (under bf16 every pass runs on OpenVINO: a model's features and scores agree)
    if choice == "tensorflow":
        yield from pipeline.predict_batches(model, batches, transform)
        return
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return
    x0 = np.asarray(transform(first) if transform is not None else first, np.float32)
    runner, reference = openvino_runner(model, x0)
    if runner is None:
        yield reference if reference is not None else next(pipeline.predict_batches(model, [x0]))
        yield from pipeline.predict_batches(model, it, transform)
        return
    yield reference if reference is not None else runner(x0)
    for batch in it:
        yield runner(transform(batch) if transform is not None else batch)
