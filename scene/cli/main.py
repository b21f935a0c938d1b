"""The ``scene`` command line: data, training, evaluation, prediction, the local stack and the registry.

Conventions (as prefect, dvc and mlflow have them): the main input is positional (``scene train DATA``), one
name per concept (the data root is ``DATA``; the data root whose champion is meant is ``--dataset``), lists are
comma-separated plural options (``--backbones a,b``), commands are grouped by noun (``scene data validate``).
Exit status: 0 ok, 1 a runtime error (one ``error: …`` line on stderr; ``--verbose`` adds the traceback), 2 a
usage error. ``--json`` prints one JSON document on stdout. The 0.1 spellings (the options ``--data``, ``--src``,
``--new``, evaluate's ``--model``, data synth's ``--out`` for what is now positional; ``--data`` for models'
``--dataset``; repeated ``--backbone``/``--pool`` for ``--backbones``/``--pools``; ``scene validate``) still work
for this release and print one ``deprecated: …`` line on stderr naming the new form.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from scene.cli.common import (  # shared with the sub-command modules
    CLASSES_HELP,
    Bars,
    CliError,
    Renamed,
    SceneParser,
    add_json,
    emit,
    json_output,
    split_list,
    stack_environment,
    state_dir,
)
from scene.metadata import DEFAULT_IMAGE_SIZE


def cmd_data_synth(a: argparse.Namespace) -> None:
    from scene.data.synth import make_synthetic

    out = make_synthetic(a.out, a.per_class, size=a.size, seed=a.seed, test_per_class=a.test_per_class)
    print(f"wrote a generated smoke dataset (not scene photos) to {out}")


def cmd_validate(a: argparse.Namespace) -> None:
    """``scene data validate DATA``: the manifest, the skipped files and the validation suite's verdict."""
    from scene import api

    ds = api.load_data(a.data, test=a.test, classes=a.classes, progress=Bars())
    report = api.check_data(ds, strict=False)  # skipped files and warnings: logged (stderr)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        ds.manifest.to_csv(Path(a.out) / "manifest.csv", index=False)
        ds.rejected.to_csv(Path(a.out) / "rejected.csv", index=False)
        (Path(a.out) / "validation.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    emit(a, {"data": a.data, "success": bool(report.success), "images": len(ds.manifest),
             "classes": list(ds.class_names), "skipped": ds.rejected.to_dict("records"),
             "validation": report.to_dict()}, report.summary_markdown())
    if not report.success:
        raise CliError("validation failed:\n  " + "\n  ".join(report.failures()))


def train_params(a: argparse.Namespace) -> Any:
    """The :class:`~scene.train.params.TrainParams` of ``scene train``: options given, the preset fills the rest."""
    from pydantic import ValidationError

    from scene.train.params import TrainParams

    given = {k: v for k, v in vars(a).items() if k in TrainParams.model_fields and v is not None}
    try:
        params = TrainParams.model_validate(given).resolved()
    except ValidationError as err:
        raise CliError("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
                                 for e in err.errors())) from err
    except ValueError as err:
        raise CliError(f"--preset: {err}") from err
    if not params.backbones:
        raise CliError("--backbones is required (or a --preset that names the backbones), e.g. --backbones "
                       "mobilenetv2,efficientnetb0")
    return params


def cmd_train(a: argparse.Namespace) -> None:
    """``scene train DATA --out DIR``: :func:`scene.api.train`, then the comparison table (with the failed backbone's
    row when one failed: every backbone is tried, then exit 1)."""
    from dataclasses import asdict

    from scene import api
    from scene.errors import TrainingError

    params = train_params(a)  # option errors named by their flag, before any data is read
    failure: TrainingError | None = None
    try:
        results = api.train(a.data, out=a.out, backbones=params.backbones, test=a.test, classes=a.classes,
                            preset=a.preset, weights=a.weights, strategy=a.strategy, views=a.views, epochs=a.epochs,
                            image_size=a.image_size, finetune_layers=a.finetune_layers,
                            finetune_blocks=a.finetune_blocks, finetune_epochs=a.finetune_epochs,
                            finetune_lr=a.finetune_lr,
                            mixed_precision=a.mixed_precision, mirror=a.mirror, refit=a.refit, seed=a.seed,
                            cache=a.cache, progress=Bars()).results
    except TrainingError as err:
        results, failure = err.results, err
    out = Path(a.out).resolve()
    md = out / "comparison.md"
    emit(a, {"out": str(out), "results": [asdict(r) for r in results]},
         (md.read_text() if md.exists() else "") + f"\nartifacts in {out}")
    if failure is not None:
        raise CliError(str(failure)) from failure


def cmd_evaluate(a: argparse.Namespace) -> None:
    """``scene evaluate MODEL DATA``: :func:`scene.api.evaluate` (``--out``: metrics.json, confusion matrix, ROC)."""
    from scene import api

    m = api.evaluate(a.model, a.data, out=a.out, progress=Bars())
    ci = (m.get("ci") or {}).get("f1_weighted")
    wrote = f"; wrote {Path(a.out) / 'metrics.json'}" if a.out else ""
    emit(a, {"model": a.model, "data": a.data, "test": m},
         f"accuracy {m['accuracy']:.3f}  F1 (weighted) {m['f1_weighted']:.3f}"
         + (f" [95% CI {ci[0]:.3f}–{ci[1]:.3f}]" if ci else "") + f"  on {m['n']} images{wrote}")


def cmd_predict(a: argparse.Namespace) -> None:
    """``scene predict DATA``: :func:`scene.api.predict` into a CSV (``--out``), the champion's model by default."""
    from scene import api

    if a.model and a.dataset:
        raise CliError("pass --model or --dataset (whose champion predicts), not both")
    df = api.predict(a.model, a.data, dataset=a.dataset, out=a.out, progress=Bars())
    bad = int((df["error"] != "").sum())
    emit(a, {"model": a.model, "dataset": a.dataset, "data": a.data, "out": a.out, "predicted": len(df) - bad,
             "unreadable": bad, "predictions": json.loads(df.to_json(orient="records"))},
         f"wrote {len(df) - bad} predictions to {a.out}"
         + (f"; {bad} unreadable images listed with their error" if bad else ""))


def build_parser() -> argparse.ArgumentParser:
    """The whole ``scene`` command tree (see the module docstring for its conventions)."""
    from scene import __version__

    p = SceneParser(prog="scene", description="Train, compare and keep retraining scene classifiers: data, training, "
                    "evaluation, prediction, the local stack, runs and the model registry.")
    p.add_argument("--version", action="version", version=f"scene {__version__}")
    p.add_argument("--verbose", action="store_true",
                   help="show tracebacks and TensorFlow/CUDA start-up messages (also accepted after the command)")
    p.add_argument("--state", metavar="DIR",
                   help="the local stack's state folder, used when the environment names no S3 store "
                   "or Prefect API (default: SCENE_STATE_DIR, else .state)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="datasets: synth, validate, upload, name").add_subparsers(
        dest="data_command", required=True, metavar="COMMAND")
    s = data.add_parser("synth", help="write a generated six-class smoke dataset (not scene photos)")
    s.positional("OUT", "--out", help="folder to write")
    s.add_argument("--per-class", type=int, default=30, help="training images per class (default 30)")
    s.add_argument("--test-per-class", type=int, default=0, help="also write seg_test/ (Kaggle layout)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_data_synth)
    _validate_parser(data.add_parser("validate", help="build the manifest and run the validation suite"))
    from scene.cli import ops

    ops.register_data(data)
    # 0.1: `scene validate --data DATA` (not listed in --help)
    _validate_parser(sub.add_parser("validate", alias_of="scene data validate"), old="--data")
    sub.choices["validate"].set_defaults(command="data", data_command="validate")

    t = sub.add_parser("train", help="train one or more backbones and compare them")
    t.positional("DATA", "--data", help="folder or s3:// URI of class folders (or the Kaggle archive)")
    t.add_argument("--out", required=True, metavar="DIR", help="folder for the models, reports and comparison")
    t.add_argument("--backbones", type=split_list, metavar="A,B",
                   help="comma-separated, e.g. mobilenetv2,efficientnetb0 (required unless --preset names them)")
    t.add_argument("--backbone", action=Renamed, dest="backbones", new="--backbones", append=True)
    t.add_argument("--preset", help="a named recipe filling every setting not given: best-cpu, finetune-cpu")
    t.add_argument("--test", metavar="DIR",
                   help="separate test set (default: seg_test of the archive, else a 20%% hold-out)")
    t.add_argument("--mirror", action="store_true", default=None,
                   help="train also on mirrored images; the saved model averages over image and mirror")
    t.add_argument("--refit", action="store_true", default=None,
                   help="cached: after validation chose the epochs, retrain the head on train + val and ship that")
    # defaults (None here) come from scene.train.params.TrainParams: an option not given is one a --preset may fill
    t.add_argument("--weights", help="imagenet (default) | none | PATH or s3:// URI to .weights.h5")
    t.add_argument("--strategy", choices=["cached", "online"], help="default: cached")
    t.add_argument("--views", type=int, help="augmented views per training image (cached; default 2)")
    t.add_argument("--epochs", type=int, help="default 100 (early stopping usually ends sooner)")
    t.add_argument("--image-size", type=int, help=f"default {DEFAULT_IMAGE_SIZE}")
    t.add_argument("--finetune-layers", type=int, help="default 0 (no fine-tuning)")
    t.add_argument("--finetune-blocks", type=int,
                   help="unfreeze the top N whole backbone blocks instead of layers (default 0)")
    t.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs: warm-up, then cosine decay (default 10)")
    t.add_argument("--finetune-lr", type=float, help="peak fine-tuning learning rate (default 1e-05)")
    t.add_argument("--mixed-precision", action="store_true", default=None, help="float16 compute (GPUs)")
    t.add_argument("--cache", metavar="DIR", help="feature cache folder or s3:// URI (default from settings)")
    t.add_argument("--classes", type=split_list, metavar="A,B",
                   help=CLASSES_HELP)
    t.add_argument("--seed", type=int, help="default 42")
    add_json(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on a labelled dataset")
    e.positional("MODEL", "--model", help="model.keras path, or an exported openvino/model.xml")
    e.positional("DATA", "--data", help="folder or s3:// URI of class folders (its test split is scored)")
    e.add_argument("--out", metavar="DIR",
                   help="folder for metrics.json, confusion_matrix.png and roc.png (default: none written)")
    add_json(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="classify images (labelled or not) into a CSV")
    r.positional("DATA", "--data", help="folder or s3:// URI of images")
    r.add_argument("--model", metavar="MODEL",
                   help="model.keras path or s3:// URI, or an exported openvino/model.xml (default: a dataset's "
                   "champion, see --dataset)")
    r.add_argument("--dataset", metavar="ROOT",
                   help="the data root whose champion predicts (default: the only dataset with a "
                   "champion; with several, name one)")
    r.add_argument("--out", default="predictions.csv", metavar="CSV",
                   help="the CSV, local or s3:// (default: predictions.csv)")
    add_json(r)
    r.set_defaults(func=cmd_predict)

    ops.register(sub)
    from scene.cli import events, models

    models.register(sub)
    events.register(sub)
    from scene.cli import audit

    audit.register(sub)
    _verbose_everywhere(p)
    return p


def _validate_parser(v: SceneParser, old: str | None = None) -> None:
    v.positional("DATA", old, help="folder or s3:// URI of class folders (or the Kaggle archive)")
    v.add_argument("--test", metavar="DIR",
                   help="separate test set (default: seg_test of the archive, else a 20%% hold-out)")
    v.add_argument("--classes", type=split_list, metavar="A,B",
                   help=CLASSES_HELP)
    v.add_argument("--out", metavar="DIR", help="folder for manifest.csv, rejected.csv, validation.json")
    add_json(v)
    v.set_defaults(func=cmd_validate)


def _verbose_everywhere(p: argparse.ArgumentParser) -> None:
    """``--verbose`` after the command too (``scene train DATA --out o --verbose``), on every leaf command."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if "--verbose" not in p._option_string_actions:
            p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="show tracebacks and TensorFlow/CUDA start-up messages")
        return
    for child in {id(c): c for a in subs for c in a.choices.values()}.values():
        _verbose_everywhere(child)


class _LogLines(logging.Handler):
    """The library's log records as plain stderr lines (``warning: …`` for warnings): INFO and up of ``scene.*``
    (the backbone being trained, skipped files, class-name notices), the operations loggers (``scene.ops``,
    ``scene.stack``) from WARNING unless ``--verbose``. The API's one-line summaries of evaluate/predict are left out:
    the command prints them on stdout."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.INFO)
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or self.verbose:
            return True
        if record.name == "scene" and record.funcName in ("evaluate", "predict"):
            return False
        return not record.name.startswith(("scene.ops", "scene.stack"))

    def emit(self, record: logging.LogRecord) -> None:
        prefix = {logging.WARNING: "warning: "}.get(record.levelno, "error: " if record.levelno > logging.WARNING
                                                    else "")
        print(prefix + record.getMessage(), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _log_lines(a: argparse.Namespace) -> Iterator[None]:
    """Show the ``scene`` loggers on stderr while a command runs (not for ``events``, which sets up its own)."""
    if a.command == "events":
        yield
        return
    logger, handler = logging.getLogger("scene"), _LogLines(a.verbose)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (Prefect's, once imported) would print each line twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _quiet(verbose: bool, tf_log_defaulted: bool) -> None:
    """Filter TensorFlow's start-up noise from stderr (scene.cli.quiet), unless ``--verbose``."""
    from scene.cli import quiet

    if not verbose:
        quiet.install()
        return
    quiet.uninstall()
    if tf_log_defaulted:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def _handled() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix (bad input, missing files, a stack that is down): one line, exit 1."""
    from scene.data.dataset import DatasetError
    from scene.data.storage import StorageError
    from scene.errors import InputRangeError, ModelLoadError, WeightsUnavailable
    from scene.ops.supervisor import StackError
    from scene.registry.integrity import IntegrityError
    from scene.registry.store import RegistryError

    handled: list[type[BaseException]] = [CliError, DatasetError, StorageError, StackError, WeightsUnavailable,
                                          InputRangeError, ModelLoadError, IntegrityError, RegistryError,
                                          ValueError, OSError]
    if "botocore" in sys.modules:  # no credentials, endpoint down, access denied
        from botocore.exceptions import BotoCoreError, ClientError

        handled += [BotoCoreError, ClientError]
    scene_errors = getattr(sys.modules.get("scene.errors"), "SceneError", None)
    if isinstance(scene_errors, type):
        handled.append(scene_errors)
    return tuple(handled)


def _unreachable(err: BaseException) -> bool:
    """Whether ``err``, or an error that led to it, is a connection that failed (a server that is down)."""
    seen: BaseException | None = err
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, ConnectionError) or type(seen).__name__ in (
                "EndpointConnectionError", "ConnectError", "ConnectTimeoutError", "Unreachable"):
            return True
        seen = seen.__cause__ or seen.__context__
    return any(s in str(err) for s in ("Could not connect", "Connection refused", "connection refused"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``scene`` command; returns its exit status (argparse exits 2 itself on a usage error)."""
    tf_log_defaulted = "TF_CPP_MIN_LOG_LEVEL" not in os.environ  # --verbose undoes only our default
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep the terminal readable
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    args = build_parser().parse_args(argv)
    _quiet(args.verbose, tf_log_defaulted)
    found: dict[str, str] = {}
    try:
        with stack_environment(args) as found, json_output(getattr(args, "json", False)), _log_lines(args):
            if found and args.verbose:
                print(f"using the local stack in {state_dir(args)}: S3 {found.get('AWS_ENDPOINT_URL', '(yours)')}, "
                      f"Prefect {found.get('PREFECT_API_URL', '(yours)')}", file=sys.stderr)
            code = args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.verbose:
            traceback.print_exc()
        known = isinstance(err, _handled())
        hint = "" if args.verbose else " (--verbose shows the traceback)"
        where = (f" (the local stack in {state_dir(args)} was used: is it up? `scene stack status`)"
                 if found and _unreachable(err) else "")
        text = str(err) if known else f"{type(err).__name__}: {err}{hint}"
        print(f"error: {text}{where}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
