"""The backbone registry: one table, one builder, the preprocessing each backbone needs, and its weights.

Every model takes raw RGB pixels in [0, 255]; the backbone's own preprocessing is a layer *inside* the
model (:class:`Preprocess`), so nobody can feed a backbone the wrong range by forgetting a step. The
seed project fed 0–1 pixels to EfficientNetB0 (which rescales 0–255 itself) and it collapsed to chance;
:func:`preflight` checks the tensors that actually reach the backbone against the range it declares.

Weights: ``imagenet`` (Keras cache → mirror prefix in the artifact bucket → Keras download),
``none`` (random initialisation), or a path / ``s3://`` URI to a ``.weights.h5`` / ``.h5`` file.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras.src.applications import efficientnet as _keras_efficientnet
from keras.src.applications import resnet as _keras_resnet
from keras.src.utils import file_utils as _keras_files

from scene.data import storage
from scene.errors import InputRangeError, WeightsUnavailable
from scene.model import runtime

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"
_VGG16_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"  # keras.applications.vgg16, include_top=False


@keras.saving.register_keras_serializable(package="scene")
class Preprocess(keras.layers.Layer):
    """A backbone's ``preprocess_input`` as a serialisable layer: ``caffe``, ``tf`` or ``none`` mode."""

    _CAFFE_MEAN = (103.939, 116.779, 123.68)  # BGR means of ImageNet, Keras' "caffe" mode

    def __init__(self, mode: str, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "none"):
            raise ValueError(f"Preprocess mode={mode!r}; expected 'caffe', 'tf' or 'none'")
        self.mode = mode

    def call(self, x: Any) -> Any:
        x = keras.ops.cast(x, "float32")
        if self.mode == "tf":  # [0, 255] -> [-1, 1]
            return x / 127.5 - 1.0
        if self.mode == "caffe":  # RGB -> BGR, minus the ImageNet mean
            return keras.ops.flip(x, axis=-1) - keras.ops.convert_to_tensor(self._CAFFE_MEAN, dtype="float32")
        return x  # the model rescales itself (EfficientNet)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry."""

    name: str
    constructor: Callable[..., keras.Model]
    preprocess: str  # Preprocess mode
    input_range: tuple[float, float]  # what the backbone's first layer expects after preprocessing
    feature_width: int  # channels after global average pooling
    default_size: int  # the size the ImageNet weights were trained at
    weights_file: Callable[[int], str]  # Keras' notop weight file name for an input size
    weights_url: str  # where Keras downloads it from (the folder)
    weights_hash: str | None = None  # Keras' own hash of that file (md5 or sha256), None where Keras has none


def _mobilenet_file(size: int) -> str:
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


_CAFFE_RANGE = (-123.68, 255 - 103.939)
BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec("resnet50", keras.applications.ResNet50, "caffe", _CAFFE_RANGE, 2048, 224,
                     lambda _: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "resnet/",
                     _keras_resnet.WEIGHTS_HASHES["resnet50"][1]),
        BackboneSpec("resnet101", keras.applications.ResNet101, "caffe", _CAFFE_RANGE, 2048, 224,
                     lambda _: "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "resnet/",
                     _keras_resnet.WEIGHTS_HASHES["resnet101"][1]),
        BackboneSpec("resnet101v2", keras.applications.ResNet101V2, "tf", (-1.0, 1.0), 2048, 224,
                     lambda _: "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "resnet/",
                     _keras_resnet.WEIGHTS_HASHES["resnet101v2"][1]),
        BackboneSpec("efficientnetb0", keras.applications.EfficientNetB0, "none", (0.0, 255.0), 1280, 224,
                     lambda _: "efficientnetb0_notop.h5", "https://storage.googleapis.com/keras-applications/",
                     _keras_efficientnet.WEIGHTS_HASHES["b0"][1]),
        BackboneSpec("vgg16", keras.applications.VGG16, "caffe", _CAFFE_RANGE, 512, 224,
                     lambda _: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", _GCS + "vgg16/",
                     _VGG16_NOTOP_MD5),
        BackboneSpec("mobilenetv2", keras.applications.MobileNetV2, "tf", (-1.0, 1.0), 1280, 224,
                     _mobilenet_file, _GCS + "mobilenet_v2/"),
    ]
}


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for ``name``, or an error listing the known names."""
    try:
        return BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(f"backbone={name!r} is not in the registry; choose from {sorted(BACKBONES)}") from None


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights came from."""

    kind: str  # "imagenet", "none" or "file"
    path: str | None  # local file loaded (None for random init)
    origin: str  # human-readable: "keras cache ~/.keras/models/x.h5", "mirror s3://…", "download", a URI
    fingerprint: str  # identifies the weights in cache keys: the file's sha256 (16 hex), or none-seed<N>

    @property
    def random_init(self) -> bool:
        return self.kind == "none"


def keras_cache_dir() -> Path:
    """Keras' model cache folder (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    from keras.src.backend.config import keras_home

    return Path(keras_home()) / "models"


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: hash each file once per process


def content_hash(path: str | Path) -> str:
    """The sha256 of a file's content, remembered per (path, size, mtime) so big weight files are read once."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = storage.sha256_file(path)
    return _HASHES[key]


def _source(kind: str, path: str | Path, origin: str) -> WeightsSource:
    return WeightsSource(kind, str(path), origin, content_hash(path)[:16])


def _matches_keras_hash(spec: BackboneSpec, path: Path) -> bool:
    """True when Keras publishes no hash for the file or the file has it."""
    return spec.weights_hash is None or bool(_keras_files.validate_file(str(path), spec.weights_hash))


def _file_weights(weights: str, s3: Any, local_cache: Path | None) -> WeightsSource:
    """A path or ``s3://`` URI; S3 files are cached locally by URI + ETag (a changed object is fetched again)."""
    loc = storage.parse(weights)
    if loc.is_s3:
        try:
            etag = s3.head_object(Bucket=loc.bucket, Key=loc.key)["ETag"].strip('"')
        except Exception as err:
            raise WeightsUnavailable(f"weights={weights!r}: cannot read the object ({storage.explain(err, loc)}); "
                                     "pass an existing s3:// URI, a local path, 'imagenet' or 'none'") from err
        tag = hashlib.sha256(f"{weights}|{etag}".encode()).hexdigest()[:16]
        local = (local_cache or keras_cache_dir()) / "scene-weights" / tag / Path(loc.key).name
        if not local.exists():
            storage.download_file(weights, local, s3)
        return _source("file", local, weights)
    if not Path(weights).is_file():
        raise WeightsUnavailable(
            f"weights={weights!r}: no such file; "
            "pass 'imagenet', 'none' or a path / s3:// URI to a .weights.h5 file")
    return _source("file", weights, weights)


def resolve_weights(spec: BackboneSpec, weights: str, size: int, *, s3: Any = None,
                    mirror: str | None = None, local_cache: Path | None = None, seed: int = 0) -> WeightsSource:
    """Find the weights file for ``weights`` (``imagenet``, ``none`` or a path/URI) without building a model.

    ImageNet files are checked against Keras' published hash where it has one (Keras cache, mirror and download).
    """
    if weights == "none":
        return WeightsSource("none", None, "random initialisation", f"none-seed{seed}")
    if weights != "imagenet":
        return _file_weights(weights, s3, local_cache)
    fname = spec.weights_file(size)
    cached = (local_cache or keras_cache_dir()) / fname
    tried = []
    if cached.is_file() and _matches_keras_hash(spec, cached):
        return _source("imagenet", cached, f"keras cache {cached}")
    state = f"its hash is not Keras' {spec.weights_hash}" if cached.is_file() else "absent"
    tried.append(f"Keras cache: {cached} ({state})")
    if mirror and s3 is not None:
        uri = mirror.rstrip("/") + "/" + fname
        try:
            storage.download_file(uri, cached, s3)
            if _matches_keras_hash(spec, cached):
                return _source("imagenet", cached, f"mirror {uri}")
            cached.unlink()
            tried.append(f"mirror: {uri} does not have Keras' hash {spec.weights_hash} (removed the copy)")
        except storage.StorageError as err:
            tried.append(f"mirror: {err}")
    else:
        tried.append("mirror: no artifact bucket configured")
    try:
        path = keras.utils.get_file(fname, spec.weights_url + fname, cache_subdir="models",
                                    file_hash=spec.weights_hash)
        return _source("imagenet", path, f"download {spec.weights_url + fname}")
    except Exception as err:  # no internet: urllib raises several types
        tried.append(f"download {spec.weights_url + fname}: {type(err).__name__}: {err}")
    raise WeightsUnavailable(
        f"ImageNet weights for {spec.name} are unavailable ({'; '.join(tried)}). Provide them one of three ways: "
        f"copy {fname} to {cached}; or upload it to {mirror or 's3://<artifact-bucket>/weights-mirror/'}{fname} "
        f"(`scene weights mirror` does this from a machine with internet); or pass --weights PATH_OR_S3_URI "
        "to a .weights.h5 file. --weights none trains from random initialisation (not transfer learning)."
    )


_BUILD_LOCK = threading.Lock()  # Keras' file lookup is patched while a constructor runs: one build at a time


@contextlib.contextmanager
def _keras_reads(path: str) -> Iterator[list[str]]:
    """While active, Keras' ``get_file`` answers every weights request with ``path`` (no network, no cache)."""
    asked: list[str] = []
    original = _keras_files.get_file

    def get_file(fname: str | None = None, *args: Any, **kwargs: Any) -> str:
        asked.append(str(fname))
        return path

    with _BUILD_LOCK:
        _keras_files.get_file = get_file
        try:
            yield asked
        finally:
            _keras_files.get_file = original


def build_backbone(name: str, size: int, weights: WeightsSource, seed: int = 0) -> keras.Model:
    """The frozen feature extractor exactly as Keras builds it for ``weights="imagenet"``, with our file loaded.

    Keras' graph depends on the ``weights`` argument (EfficientNet adds an input ``Rescaling`` only for
    ``"imagenet"``), so any weights file is loaded by calling the constructor with ``weights="imagenet"``
    while Keras' file lookup returns that file. Random initialisation (``weights="none"``) is Keras' own
    ``weights=None`` graph, seeded, so every build of the same seed has the same weights.
    """
    runtime.configure_threads()  # before the first TensorFlow op of the process
    spec = get_spec(name)
    args = {"include_top": False, "input_shape": (size, size, 3), "pooling": "avg"}
    if not weights.path:
        keras.utils.set_random_seed(seed)
        model = spec.constructor(weights=None, **args)
    else:
        try:
            with _keras_reads(weights.path) as asked:
                model = spec.constructor(weights="imagenet", **args)
        except Exception as err:
            raise WeightsUnavailable(
                f"weights file {weights.origin} does not fit {name} at {size}px "
                f"({type(err).__name__}: {err}); pass weights made for keras.applications {name} notop") from err
        if not asked:
            raise WeightsUnavailable(f"keras.applications {name} loaded no weights file for {weights.origin}")
    model.trainable = False
    return model


_BUILT: OrderedDict[tuple[str, int, str, int], keras.Model] = OrderedDict()  # the backbones of recent runs
_BUILT_MAX = 4


def shared_backbone(name: str, size: int, weights: WeightsSource, seed: int = 0) -> keras.Model:
    """One backbone instance per (name, size, weights, seed) in this process: extraction and the saved model
    use the very same network. Recently used instances are kept (at most ``_BUILT_MAX``)."""
    key = (name, size, weights.fingerprint, seed)
    with _BUILD_LOCK:
        model = _BUILT.pop(key, None)
    if model is None:
        model = build_backbone(name, size, weights, seed)
    with _BUILD_LOCK:
        _BUILT[key] = model
        while len(_BUILT) > _BUILT_MAX:
            _BUILT.popitem(last=False)
    return model


def feature_extractor(name: str, size: int, weights: WeightsSource, seed: int = 0,
                      backbone: keras.Model | None = None) -> keras.Model:
    """Raw [0, 255] RGB → pooled features, preprocessing inside (the shared backbone unless one is given)."""
    spec = get_spec(name)
    inp = keras.Input((size, size, 3), name="image")
    backbone = backbone or shared_backbone(name, size, weights, seed)
    out = backbone(Preprocess(spec.preprocess, name="preprocess")(inp), training=False)
    return keras.Model(inp, out, name=f"{name}_features")


def preflight(name: str, batch: Any, *, min_coverage: float = 0.25, tolerance: float = 0.05) -> tuple[float, float]:
    """Check what ``batch`` becomes after the backbone's preprocessing against its expected range.

    Fails when values leave the range (beyond ``tolerance`` of its width) or cover less than
    ``min_coverage`` of it — 0–1 pixels fed to a model that expects 0–255 cover 0.4% of it.
    """
    spec = get_spec(name)
    x = np.asarray(Preprocess(spec.preprocess)(np.asarray(batch, dtype=np.float32)))
    lo, hi = float(x.min()), float(x.max())
    elo, ehi = spec.input_range
    width = ehi - elo
    if lo < elo - tolerance * width or hi > ehi + tolerance * width or (hi - lo) < min_coverage * width:
        raw = np.asarray(batch)
        raise InputRangeError(
            f"backbone {name} expects its preprocessed input in [{elo:g}, {ehi:g}] "
            f"('{spec.preprocess}' preprocessing of raw RGB pixels in [0, 255]), but this batch becomes "
            f"[{lo:.3g}, {hi:.3g}] (raw pixels [{float(raw.min()):.3g}, {float(raw.max()):.3g}]). Feed raw 0–255 "
            "pixels: do not rescale to 0–1 before the model; preprocessing is inside the model."
        )
    return lo, hi


def mirror_weights(names: list[str], size: int, mirror: str, s3: Any, *, local_cache: Path | None = None
                   ) -> dict[str, str]:
    """Copy each backbone's ImageNet file (Keras cache or download) to ``mirror``; name → URI or error."""
    out = {}
    for name in names:
        spec = get_spec(name)
        try:
            w = resolve_weights(spec, "imagenet", size, local_cache=local_cache)
        except WeightsUnavailable as err:
            out[name] = f"error: {err}"
            continue
        uri = mirror.rstrip("/") + "/" + spec.weights_file(size)
        storage.upload_file(w.path, uri, s3)  # type: ignore[arg-type]
        out[name] = uri
    return out
