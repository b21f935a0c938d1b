"""The Python API: train, evaluate and predict on a folder or an ``s3://`` URI, from a notebook or a script.

    import scene

    run = scene.train("photos/", out="runs/first", backbones=["mobilenetv2"], epochs=30)
    print(run.table)                                   # one row per backbone (the CLI's comparison table)
    best = run.best                                    # the TrainResult with the best validation F1
    scores = scene.evaluate(best.model_path, "photos_test/")   # accuracy, f1_weighted, per_class, confusion, ...
    preds = scene.predict(best.model_path, "new_photos/")      # image, label, confidence, p_<class>, error

Errors are raised, never printed: every one is a :class:`scene.SceneError` (bad options :class:`~scene.ParamsError`,
bad data :class:`~scene.DatasetError` or :class:`~scene.DataValidationError`, a backbone that fails
:class:`~scene.TrainingError` with ``.results``). Progress goes to :mod:`logging` (logger ``scene``) and, when given,
to ``progress(stage, done, total)``. S3 locations use :class:`scene.Settings` (``settings=``, else the environment).

The CLI's ``train``, ``evaluate`` and ``predict`` commands are these functions plus printing. Importing this module
loads neither TensorFlow nor pandas: they load when a function runs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scene.errors import DataValidationError, ModelLoadError, ParamsError, TrainingError

if TYPE_CHECKING:
    import pandas as pd

    from scene.data.dataset import Dataset
    from scene.settings import Settings
    from scene.train.experiment import TrainResult
    from scene.train.params import TrainParams

log = logging.getLogger("scene")

Progress = Callable[[str, int, int], None]  # progress(stage, done, total), e.g. ("reading images", 200, 1400)
PathOrUri = str | os.PathLike[str]

__all__ = ["TrainRun", "champion_model", "check_data", "evaluate", "load_data", "local_model", "predict", "train",
           "train_params"]


@dataclass(frozen=True)
class TrainRun:
    """What :func:`train` did: one :class:`~scene.train.experiment.TrainResult` per backbone, in training order."""

    results: list[TrainResult]
    out_dir: Path  # <out>/<backbone>/ per backbone, comparison.md and comparison.csv
    dataset: Dataset  # the manifest trained on (.manifest, .rejected: skipped files with their problem)
    validation: Any  # the data's validation report (.success, .warnings(), .summary_markdown())

    @property
    def table(self) -> pd.DataFrame:
        """The comparison table (one row per backbone, best test F1 first): what ``comparison.csv`` holds."""
        from scene.evaluation.comparison import comparison_table

        return comparison_table([r.comparison_row() for r in self.results])

    @property
    def best(self) -> TrainResult:
        """The result with the best validation F1 (weighted) among ``ok`` runs; when every run collapsed, the best
        collapsed one (its ``status`` says so; a collapsed model is never promoted)."""
        for status in ("ok", "collapsed"):
            runs = [r for r in self.results if r.status == status]
            if runs:
                return max(runs, key=lambda r: r.metrics.get("val", {}).get("f1_weighted") or 0.0)
        raise TrainingError("no backbone finished", self.results)  # train() raises before this can happen


def _settings(settings: Settings | None) -> Settings:
    from scene.settings import Settings

    return settings if settings is not None else Settings.from_env()


def _is_s3(*uris: Any) -> bool:
    return any(u is not None and str(u).startswith("s3://") for u in uris)


def _s3(settings: Settings, *uris: Any) -> Any:
    """An S3 client when any of ``uris`` is an ``s3://`` URI, else None."""
    if not _is_s3(*uris):
        return None
    from scene.data.storage import s3_client

    return s3_client(settings)


def _class_list(classes: Sequence[str] | str | None) -> list[str] | None:
    if classes is None:
        return None
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
    if not all(names) or len(set(names)) != len(names):
        raise ParamsError(f"classes={classes!r}: pass distinct, non-empty class names, e.g. ['cats', 'dogs']")
    return names


def load_data(data: PathOrUri, *, test: PathOrUri | None = None, classes: Sequence[str] | str | None = None,
              settings: Settings | None = None, progress: Progress | None = None) -> Dataset:
    """The manifest of ``data`` (and the separate ``test`` root): class folders, or the Kaggle archive layout.

    ``classes``: the class names in order (a list or "a,b,c"); default: the Intel classes when every folder is one,
    else the sorted folder names. Files that cannot be used (OS litter such as ``.DS_Store`` or ``__MACOSX/``
    included) are skipped and listed in ``Dataset.rejected`` with their problem.
    """
    from scene.data import packs
    from scene.data.dataset import build_dataset

    settings = _settings(settings)
    data_s, test_s = str(data), (str(test) if test is not None else None)
    s3 = _s3(settings, data_s, test_s)
    packer = packs.writer_for(data_s, settings.artifact_bucket, s3) if s3 is not None else None
    return build_dataset(data_s, test_s, class_names=_class_list(classes), s3=s3, packer=packer,
                         progress=(lambda d, t: progress("reading images", d, t)) if progress else None)


def check_data(ds: Dataset, *, strict: bool = True) -> Any:
    """Validate ``ds`` (:func:`scene.data.validation.validate_manifest`); skipped files and warnings are logged.

    ``strict``: raise :class:`~scene.DataValidationError` (``.report``) when a check fails; else return the report.
    """
    from scene.data.validation import validate_manifest

    report = validate_manifest(ds.manifest, ds.rejected, ds.class_names)
    for problem in ds.rejected.itertuples():
        log.info("skipped %s: %s", problem.key, problem.problem)
    for warning in report.warnings():
        log.warning("%s", warning)
    if strict and not report.success:
        raise DataValidationError(f"{ds.source}: the data failed validation, nothing was trained:\n  "
                                  + "\n  ".join(report.failures()), report)
    return report


def train_params(backbones: Sequence[str] | str | None = None, **options: Any) -> TrainParams:
    """:class:`~scene.train.params.TrainParams` from keyword options (None: not given; a ``preset`` fills those);
    :class:`~scene.ParamsError` names a bad option."""
    from pydantic import ValidationError

    from scene.train.params import TrainParams

    given = {k: v for k, v in options.items() if v is not None}
    if backbones is not None:
        names = backbones.split(",") if isinstance(backbones, str) else backbones
        given["backbones"] = [str(b).strip() for b in names]
    try:
        params = TrainParams.model_validate(given).resolved()
        params.check()
    except ValidationError as err:
        raise ParamsError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}"
                                    for e in err.errors())) from err
    except ValueError as err:
        raise ParamsError(str(err)) from err
    return params


def train(data: PathOrUri, *, out: PathOrUri, backbones: Sequence[str] | str | None = None,
          test: PathOrUri | None = None, classes: Sequence[str] | str | None = None, preset: str | None = None,
          weights: str | None = None, strategy: str | None = None, views: int | None = None,
          epochs: int | None = None, image_size: int | None = None, finetune_layers: int | None = None,
          finetune_blocks: int | None = None, finetune_epochs: int | None = None, finetune_lr: float | None = None,
          mixed_precision: bool | None = None, mirror: bool | None = None, refit: bool | None = None,
          seed: int | None = None, cache: PathOrUri | None = None, settings: Settings | None = None,
          progress: Progress | None = None) -> TrainRun:
    """Train each backbone on ``data`` (a folder or ``s3://`` URI of class folders) and compare them.

    ``out``: a local folder; each backbone writes ``<out>/<backbone>/`` (model.keras, config.json, metrics, plots,
    report) and the run writes ``comparison.md`` / ``comparison.csv``. ``backbones``: names (list or "a,b");
    default: the preset's, else :data:`scene.metadata.DEFAULT_BACKBONES`. Every other option is the CLI's ``train``
    option of the same name (None: the preset's or :class:`~scene.train.params.TrainParams`' default); ``weights``
    is "imagenet" (Keras cache → the S3 mirror → download), "none" or a ``.weights.h5`` path / URI. ``cache``: the
    feature cache (default ``settings.feature_cache``).

    Raises :class:`~scene.ParamsError`, :class:`~scene.DatasetError` / :class:`~scene.DataValidationError` (before
    anything trains), and :class:`~scene.TrainingError` when a backbone fails: it names the backbone and the cause
    (``__cause__``); the backbones after it still train (one missing weight file should not cost the others'
    hours), then the error is raised: ``.results`` holds every backbone's result in order, the failed ones with
    ``error.txt`` in their folder, and the comparison is written.
    """
    from scene.train.experiment import compare
    from scene.train.stages import failed, run_backbone

    settings = _settings(settings)
    params = train_params(backbones, preset=preset, weights=weights, strategy=strategy, views=views, epochs=epochs,
                          image_size=image_size, finetune_layers=finetune_layers, finetune_blocks=finetune_blocks,
                          finetune_epochs=finetune_epochs, finetune_lr=finetune_lr, mixed_precision=mixed_precision,
                          mirror=mirror, refit=refit, seed=seed)
    configs = [params.config(b) for b in params.names()]
    ds = load_data(data, test=test, classes=classes, settings=settings, progress=progress)
    report = check_data(ds)
    cache_root = str(cache) if cache is not None else settings.feature_cache
    # S3 when any location is an s3:// URI, or when an endpoint is configured (the weights mirror lives there)
    uses_mirror = bool(settings.s3_endpoint_url) and params.weights == "imagenet"
    s3 = _s3(settings, str(data), test, cache_root, params.weights, "s3://" if uses_mirror else None)
    mirror_uri = f"s3://{settings.artifact_bucket}/{settings.weights_mirror_prefix}" if s3 is not None else None
    out_dir = Path(out)
    results: list[TrainResult] = []
    failures: list[tuple[str, Exception]] = []
    for cfg in configs:
        log.info("%s: %s, weights %s, %d classes, %d images", cfg.backbone, cfg.strategy, cfg.weights,
                 len(ds.class_names), len(ds.manifest))
        stage_progress = ((lambda stage, d, t, b=cfg.backbone: progress(f"{b}: {stage}", d, t))
                          if progress else None)
        try:
            result = run_backbone(ds, cfg, out_dir / cfg.backbone, cache_root=cache_root, s3=s3, mirror=mirror_uri,
                                  progress=stage_progress)
        except Exception as err:
            log.error("%s failed: %s: %s", cfg.backbone, type(err).__name__, err)
            results.append(failed(ds, cfg, err, out_dir / cfg.backbone))
            failures.append((cfg.backbone, err))
            continue
        results.append(result)
        log.info("%s: %s, val F1 %.3f, test F1 %.3f (%.0f s)", cfg.backbone, result.status,
                 result.metrics.get("val", {}).get("f1_weighted") or float("nan"),
                 result.metrics.get("test", {}).get("f1_weighted") or float("nan"), result.seconds)
        if result.status == "collapsed":
            log.warning("%s collapsed (predicts one class or near chance): %s", cfg.backbone,
                        result.metrics.get("test", {}).get("collapse_reason", ""))
    compare(results, out_dir)
    if failures:
        backbone, err = failures[0]
        others = f" (also failed: {', '.join(b for b, _ in failures[1:])})" if len(failures) > 1 else ""
        raise TrainingError(f"{backbone} failed: {type(err).__name__}: {err}{others}", results, backbone) from err
    return TrainRun(results, out_dir, ds, report)


def champion_model(dataset: str | None = None, *, settings: Settings | None = None) -> str:
    """The ``model.keras`` URI of ``dataset``'s champion (without one: of the only dataset that has a champion);
    :class:`~scene.registry.RegistryError` says which datasets have one."""
    from scene import registry
    from scene.data.storage import s3_client

    settings = _settings(settings)
    champ = registry.serving_champion(s3_client(settings), settings.artifact_bucket, dataset)
    log.info("using the champion %s of %s", champ["version"], champ["data"])
    return str(champ["model"])  # champion.json's model field: the one place the champion's path comes from


def local_model(model: PathOrUri, *, settings: Settings | None = None) -> str:
    """A local path of ``model``: a ``model.keras`` path as given, or an ``s3://`` URI downloaded (with its
    ``config.json``) into a temporary folder; a registered version is verified against its checksums."""
    from scene.model import export

    uri = str(model)
    if uri.startswith("s3://") and export.is_exported(uri):
        raise ModelLoadError(f"model={uri!r}: an exported OpenVINO model is read from a local folder (model.xml, "
                             "model.bin and export.json together); download the version's openvino/ folder first, "
                             "or pass its model.keras URI")
    if not uri.startswith("s3://"):
        if not Path(uri).is_file():
            raise ModelLoadError(f"model={uri!r}: no such file; pass a model.keras path (a TrainResult's "
                                 "model_path) or an s3:// URI")
        return uri
    import tempfile

    from scene.data import storage
    from scene.registry import integrity

    client = storage.s3_client(_settings(settings))
    folder = Path(tempfile.mkdtemp(prefix="scene-model-"))
    version = uri.rsplit("/", 1)[0] + "/"
    if integrity.is_version_uri(version):  # a registered model: verified against checksums.json and its id
        integrity.fetch_version(client, version, folder / "v", names=["model.keras"], optional=["config.json"])
        return str(folder / "v" / "model.keras")
    storage.download_file(uri, folder / "model.keras", client)
    config = uri.rsplit("/", 1)[0] + "/config.json"
    if storage.exists(config, client):
        storage.download_file(config, folder / "config.json", client)
    return str(folder / "model.keras")


def _load(path: str) -> tuple[Any, tuple[str, ...]]:
    """The Keras model at ``path`` and its class names (``config.json`` beside it, else the Intel classes); for an
    exported OpenVINO IR (``openvino/model.xml``), the IR and the class names of its ``export.json``."""
    from scene.metadata import CLASS_NAMES
    from scene.model import export
    from scene.model.network import load

    if export.is_exported(path):
        exported = export.load(path)
        return exported, exported.class_names

    cfg = Path(path).with_name("config.json")
    classes = tuple(json.loads(cfg.read_text()).get("class_names", CLASS_NAMES)) if cfg.exists() else CLASS_NAMES
    model = load(path)
    if model.output_shape[-1] != len(classes):
        raise ModelLoadError(f"{path}: the model has {model.output_shape[-1]} outputs but "
                             f"{cfg if cfg.exists() else 'the default class list'} names {len(classes)} classes "
                             "(keep the config.json written beside model.keras)")
    return model, classes


def evaluate(model: PathOrUri, data: PathOrUri, *, out: PathOrUri | None = None, settings: Settings | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Metrics of ``model`` (a ``model.keras`` path or ``s3://`` URI) on every image of ``data`` (class folders
    named after the model's classes): ``accuracy``, ``f1_weighted``, ``f1_macro``, ``per_class``, ``confusion``,
    ``ci`` (95% bootstrap), ``collapsed``, ``n`` ... (:meth:`scene.evaluation.metrics.SplitMetrics.to_dict`).

    ``out``: also write ``metrics.json``, ``confusion_matrix.png`` and ``roc.png`` there (what ``scene evaluate``
    writes).
    """
    from scene.data.dataset import DatasetError
    from scene.model.predict import predict as predict_rows
    from scene.train.experiment import evaluate_all

    settings = _settings(settings)
    path = local_model(model, settings=settings)
    keras_model, classes = _load(path)
    ds = load_data(data, classes=classes, settings=settings, progress=progress)
    if ds.manifest.empty:
        raise DatasetError(f"{data}: no usable images ({len(ds.rejected)} files skipped); pass a folder of "
                           f"class folders named {list(classes)}")
    p = predict_rows(keras_model, ds.manifest, int(keras_model.input_shape[1]), split="test",
                     s3=_s3(settings, str(data)), progress=progress)
    m = evaluate_all({"test": p}, classes)["test"]
    log.info("accuracy %.3f, F1 (weighted) %.3f on %d images of %s", m.accuracy, m.f1_weighted, m.n, data)
    if m.collapsed:
        log.warning("collapsed: %s", m.collapse_reason)
    if out is not None:
        from scene.evaluation.plots import plot_confusion, plot_roc

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"test": m.to_dict(), "meta": {
            "model": str(model), "data": str(data), "data_fingerprint": ds.fingerprint, "class_names": list(classes),
            "skipped": ds.rejected.to_dict("records")}}, indent=2))
        plot_confusion(m.confusion, classes, folder / "confusion_matrix.png", f"{Path(path).parent.name} — {data}")
        plot_roc(p.y_true, p.probs, classes, folder / "roc.png")
    return m.to_dict()


def predict(model: PathOrUri | None, data: PathOrUri, *, dataset: str | None = None, out: PathOrUri | None = None,
            settings: Settings | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Classify every image under ``data`` (folder or ``s3://`` prefix, any depth, labelled or not).

    ``model``: a ``model.keras`` path or ``s3://`` URI; None: the champion of ``dataset`` (see
    :func:`champion_model`). Returns one row per file: ``image``, ``label``, ``confidence``, ``p_<class>`` per
    class, ``error`` ("" for a predicted image; else why the file was not, and no label). ``out``: also write the
    CSV ``scene predict`` writes (local or ``s3://``; its first column is ``key``).
    """
    from scene.data import storage
    from scene.model.predict import predict_frame

    if model is not None and dataset is not None:
        raise ParamsError("pass model or dataset (whose champion predicts), not both")
    settings = _settings(settings)
    path = local_model(model if model is not None else champion_model(dataset, settings=settings), settings=settings)
    keras_model, classes = _load(path)
    s3 = _s3(settings, str(data), out)
    df = predict_frame(keras_model, str(data), classes, s3=s3, progress=progress)
    bad = int((df["error"] != "").sum())
    log.info("predicted %d images of %s%s", len(df) - bad, data, f"; {bad} files not predicted (see error)" if bad
             else "")
    if out is not None:
        storage.write_bytes(str(out), df.to_csv(index=False, float_format="%.6f").encode(), s3)
    return df.rename(columns={"key": "image"})
