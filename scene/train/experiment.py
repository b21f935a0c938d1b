"""A backbone's results: evaluation of its predictions, its artifacts, its :class:`TrainResult`, the comparison.

Their stages are in :mod:`scene.train.stages` (``prepare → extract → fit → finetune → evaluate → write``).

Every per-backbone folder holds ``model.keras``, ``config.json`` (full config, classes, data
fingerprint, weights source), ``metrics.json``, ``history.csv``, plots, ``report.html`` and
``model_card.md``. A failing backbone yields a ``failed`` result with its error; it never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scene.data import storage
from scene.data.dataset import Dataset
from scene.evaluation.comparison import write_comparison
from scene.evaluation.metrics import SplitMetrics, evaluate_predictions, most_confused_pairs
from scene.evaluation.model_card import write_model_card
from scene.evaluation.plots import plot_confusion, plot_learning_curves, plot_roc
from scene.evaluation.report import thumbnail_data_uri, write_report_html
from scene.model.predict import Predictions
from scene.train.fit import FitResult, TrainConfig

RANDOM_INIT_WARNING = "random init — not a transfer-learning result"


@dataclass(frozen=True)
class TrainResult:
    """The outcome of training one backbone; flows branch on ``status``."""

    backbone: str
    status: str  # "ok", "collapsed" (never promoted) or "failed"
    error: str = ""
    out_dir: str = ""
    model_path: str | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> SplitMetrics.to_dict()
    seconds: float = 0.0
    weights: str = ""
    weights_origin: str = ""
    random_init: bool = False
    strategy: str = ""
    features_computed: int = 0
    features_cached: int = 0
    data_fingerprint: str = ""
    version: dict[str, Any] = field(default_factory=dict)  # the registry version it became (train-backbone registers)

    def comparison_row(self) -> dict[str, Any]:
        """One row of the comparison table."""
        m = {s: self.metrics.get(s, {}) for s in ("train", "val", "test")}
        return {
            "backbone": self.backbone, "weights": "none" if self.random_init else self.weights,
            "strategy": self.strategy, "status": self.status, "error": self.error,
            "test_accuracy": m["test"].get("accuracy"), "test_f1_weighted": m["test"].get("f1_weighted"),
            "test_f1_macro": m["test"].get("f1_macro"), "test_auc_ovr_weighted": m["test"].get("auc_ovr_weighted"),
            "val_f1_weighted": m["val"].get("f1_weighted"), "train_f1_weighted": m["train"].get("f1_weighted"),
            "seconds": round(self.seconds, 1),
            "version": (self.version or {}).get("version", ""),  # the registry version it became ("": none)
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def registered(self, version: Any) -> TrainResult:
        """This result with the registry version it became (a :class:`~scene.registry.ModelVersion`)."""
        return replace(self, version=version.to_dict())


def evaluate_all(preds: dict[str, Predictions], class_names: tuple[str, ...], *, bootstrap: int = 1000,
                 seed: int = 0) -> dict[str, SplitMetrics]:
    """Metrics of every split; bootstrap intervals on the test split."""
    return {s: evaluate_predictions(p.y_true, p.probs, class_names, bootstrap=bootstrap if s == "test" else 0,
                                    seed=seed) for s, p in preds.items()}


def _confusion_examples(p: Predictions, metrics: SplitMetrics, class_names: tuple[str, ...], s3: Any,
                        per_pair: int = 4) -> list[dict[str, Any]]:
    pred = p.probs.argmax(1)
    out = []
    for true, predicted, count in most_confused_pairs(metrics.confusion, class_names, top=3):
        ti, pi = class_names.index(true), class_names.index(predicted)
        keys = [k for k, t, q in zip(p.keys, p.y_true, pred, strict=True) if t == ti and q == pi][:per_pair]
        examples = []
        for key in keys:
            try:
                examples.append(thumbnail_data_uri(storage.read_bytes(key, s3)))
            except storage.StorageError:
                continue
        out.append({"true": true, "pred": predicted, "count": count, "examples": [e for e in examples if e]})
    return out


def write_artifacts(ds: Dataset, cfg: TrainConfig, fit_result: FitResult, preds: dict[str, Predictions],
                    metrics: dict[str, SplitMetrics], out_dir: Path, *, s3: Any = None,
                    label_issues: Sequence[dict[str, Any]] = (), test: pd.DataFrame | None = None) -> dict[str, Any]:
    """Plots, ``metrics.json``, ``config.json``, ``test_predictions.csv``, ``report.html`` and ``model_card.md``;
    returns config.json.

    ``label_issues``: rows of the data's label audit (:func:`scene.audit.labels.issue_rows`) for ``report.html``.
    ``test``: the test split's per-image outcome when already computed (else made from ``preds["test"]``).
    """
    warnings = [RANDOM_INIT_WARNING] if fit_result.weights.random_init else []
    eval_split = "test" if "test" in preds else "val"
    plots = {"learning curves": plot_learning_curves(fit_result.history, out_dir / "learning_curves.png")}
    if eval_split in preds:
        m, p = metrics[eval_split], preds[eval_split]
        plots["confusion matrix"] = plot_confusion(m.confusion, ds.class_names, out_dir / "confusion_matrix.png",
                                                   f"{cfg.backbone} — {eval_split}")
        plots["ROC curves"] = plot_roc(p.y_true, p.probs, ds.class_names, out_dir / "roc.png")
    summary = {
        "backbone": cfg.backbone, "weights": fit_result.weights.origin, "strategy": cfg.strategy,
        "views": str(cfg.views), "image size": str(cfg.image_size),
        "fine-tuned": (f"top {cfg.finetune_blocks} blocks" if cfg.finetune_blocks else
                       f"top {cfg.finetune_layers} layers" if cfg.finetune_layers else "no"),
        "data fingerprint": ds.fingerprint, "data source": ds.source,
        "images (train/val/test)": "/".join(str(len(ds.split(s))) for s in ("train", "val", "test")),
        "training time": f"{fit_result.seconds:.1f} s",
    }
    if fit_result.history.attrs.get("epochs_per_s"):
        summary["head epochs/s"] = f"{fit_result.history.attrs['epochs_per_s']:.1f}"
    if fit_result.held_out_val is not None:
        what = "network fine-tuned again" if cfg.finetune_refit else "head retrained"
        summary["refit"] = (f"{what} on train + val for {fit_result.history.attrs.get('refit_epochs')} epochs "
                            "(chosen on val); val metrics are the held-out one's, before the refit")
        if cfg.finetune_ensemble:
            summary["ensemble"] = ("the model averages the probabilities of the network fine-tuned on train "
                                   "(the held-out one) and the one fine-tuned again on train + val")
    if fit_result.extract:
        summary["features computed / cached"] = f"{fit_result.extract.computed} / {fit_result.extract.cached}"
    metric_docs = {s: m.to_dict() for s, m in metrics.items()}
    doc = write_config(out_dir / "config.json", cfg, ds, fit_result,
                       {"summary": summary, "seconds": fit_result.seconds})
    meta = {"backbone": cfg.backbone, "class_names": list(ds.class_names), "data_fingerprint": ds.fingerprint,
            "data_source": ds.source, "test_source": ds.test_source,
            "synthetic_data": bool(getattr(ds, "synthetic", False)),
            "random_init": fit_result.weights.random_init, "weights": fit_result.weights.origin,
            "weights_sha256_16": fit_result.weights.fingerprint,
            "predictions": {s: p.source for s, p in preds.items()},
            "saved_model_agreement": preds["test"].agreement if "test" in preds else None}
    (out_dir / "metrics.json").write_text(json.dumps({**metric_docs, "meta": meta}, indent=2))
    if "test" in preds:
        (test if test is not None else test_predictions(preds["test"], ds)).to_csv(out_dir / "test_predictions.csv",
                                                                                     index=False)
    confusions = (_confusion_examples(preds[eval_split], metrics[eval_split], ds.class_names, s3)
                  if eval_split in preds else [])
    write_report_html(out_dir / "report.html", title=f"scene — {cfg.backbone}", summary=summary, metrics=metrics,
                      plots=plots, confusions=confusions, warnings=warnings, label_issues=label_issues)
    write_model_card(out_dir / "model_card.md", name=f"scene-{cfg.backbone}", summary=summary,
                     params=cfg.to_dict(), metrics=metrics, warnings=warnings)
    return doc


def test_predictions(p: Predictions, ds: Dataset) -> pd.DataFrame:
    """Per-image outcome on the test split, keyed by content hash (pairs images across model versions)."""
    sha = dict(zip(ds.manifest["key"], ds.manifest["sha256"], strict=True))
    pred = p.probs.argmax(1)
    return pd.DataFrame({"key": p.keys, "sha256": [sha[k] for k in p.keys], "y_true": p.y_true, "y_pred": pred,
                         "correct": pred == p.y_true})


def status_of(metrics: dict[str, SplitMetrics]) -> str:
    """``collapsed`` when the evaluation split (test, else val) is collapsed, else ``ok``."""
    m = metrics.get("test") or metrics.get("val")
    return "collapsed" if m is not None and m.collapsed else "ok"


def result_of(ds: Dataset, cfg: TrainConfig, fitted: FitResult, metrics: dict[str, SplitMetrics], out_dir: Path,
              seconds: float) -> TrainResult:
    """The :class:`TrainResult` of a finished, evaluated run."""
    ex = fitted.extract
    return TrainResult(
        cfg.backbone, status_of(metrics), "", str(out_dir), str(fitted.model_path),
        {s: m.to_dict() for s, m in metrics.items()}, seconds, cfg.weights,
        fitted.weights.origin, fitted.weights.random_init, cfg.strategy, ex.computed if ex else 0,
        ex.cached if ex else 0, ds.fingerprint,
    )


def compare(results: list[TrainResult], out_dir: str | Path) -> tuple[Path, Path]:
    """``comparison.md`` and ``comparison.csv`` across backbones, best by test F1."""
    return write_comparison([r.comparison_row() for r in results], out_dir)


def per_image_correct(p: Predictions) -> np.ndarray:
    """Whether each image was classified correctly (input to McNemar's test)."""
    return p.probs.argmax(1) == p.y_true


def fetch_verified(s3: Any, version_uri: str, purpose: str = "model") -> Path:
    """A local copy of a registered version (only what its checksums.json lists, each file verified; model.keras
    against the version id) in a new temporary folder; returns that folder."""
    import tempfile

    from scene.registry.integrity import fetch_version

    return fetch_version(s3, version_uri, Path(tempfile.mkdtemp(prefix=f"scene-{purpose}-")) / "v", names=[])


def score_version(s3: Any, version_uri: str, ds: Dataset) -> pd.DataFrame:
    """A registered model's per-image outcome on ``ds``'s test split (its verified model.keras, end to end)."""
    from scene.model.network import load
    from scene.model.predict import predict

    model = load(str(fetch_verified(s3, version_uri, "champion") / "model.keras"))
    return test_predictions(predict(model, ds.split("test"), int(model.input_shape[1]), split="test", s3=s3), ds)


def write_config(path: Path, cfg: TrainConfig, ds: Dataset, fit_result: FitResult, fields: dict[str, Any]) -> dict:
    """``config.json`` beside the model: full config, classes, data fingerprint, weights source, and ``fields``."""
    doc = {
        "config": cfg.to_dict(),
        "class_names": list(ds.class_names),
        "data_fingerprint": ds.fingerprint,
        "data_source": ds.source,
        "test_source": ds.test_source,
        "weights": asdict(fit_result.weights),
        "random_init": fit_result.weights.random_init,
        **fields,
    }
    storage.write_bytes(str(path), json.dumps(doc, indent=2, default=str).encode())  # atomic: temp + rename
    return doc


