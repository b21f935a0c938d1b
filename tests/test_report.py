"""scene.evaluation plots, report, model_card, comparison: PNGs, self-contained HTML, model card, comparison table."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scene.evaluation.comparison import comparison_table, write_comparison
from scene.evaluation.metrics import evaluate_predictions
from scene.evaluation.model_card import write_model_card
from scene.evaluation.plots import plot_confusion, plot_learning_curves, plot_roc
from scene.evaluation.report import markdown_table, thumbnail_data_uri, write_report_html

NAMES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
K = len(NAMES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _probs(y: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), K))
    logits[np.arange(len(y)), y] += 2.5
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _history() -> pd.DataFrame:
    n_head, n_ft = 6, 4
    epochs = np.arange(1, n_head + n_ft + 1)
    loss = 1.5 / epochs
    return pd.DataFrame(
        {
            "epoch": epochs,
            "loss": loss,
            "val_loss": loss + 0.1 + 0.02 * (epochs - 7) ** 2 / 10,
            "accuracy": 1 - loss / 2,
            "val_accuracy": 1 - loss / 2 - 0.05,
            "lr": [1e-3] * n_head + [1e-5] * n_ft,
            "phase": ["head"] * n_head + ["finetune"] * n_ft,
        }
    )


def _jpeg(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (150, 120)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def split_metrics() -> dict:
    y = np.repeat(np.arange(K), 8)
    test = evaluate_predictions(y, _probs(y, 1), NAMES, bootstrap=100)
    val = evaluate_predictions(y, _probs(y, 2), NAMES)
    return {"val": val, "test": test}


def _is_png(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path: Path) -> None:
    y = np.repeat(np.arange(K), 5)
    probs = _probs(y)
    cm = evaluate_predictions(y, probs, NAMES).confusion
    out = [
        plot_learning_curves(_history(), tmp_path / "a" / "curves.png"),
        plot_confusion(cm, NAMES, tmp_path / "cm.png", "test <confusion>"),
        plot_roc(y, probs, NAMES, tmp_path / "roc.png"),
        # restarted epoch numbers and no phase/val columns must still plot
        plot_learning_curves(
            pd.DataFrame({"epoch": [0, 1, 0, 1], "loss": [2, 1, 0.9, 0.8]}), tmp_path / "b.png"
        ),
        plot_roc(y[y != 5], probs[y != 5], NAMES, tmp_path / "roc_missing.png"),
    ]
    for p in out:
        assert isinstance(p, Path) and _is_png(p), p


def test_thumbnail_data_uri() -> None:
    uri = thumbnail_data_uri(_jpeg(), size=32)
    assert uri.startswith("data:image/jpeg;base64,")
    import base64

    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(im.size) == 32 and im.mode == "RGB"
    buf = io.BytesIO()
    Image.new("L", (10, 10)).save(buf, format="PNG")
    assert thumbnail_data_uri(buf.getvalue()).startswith("data:image/jpeg")
    assert thumbnail_data_uri(b"not an image") == ""


def test_report_html_self_contained_and_escaped(tmp_path: Path, split_metrics: dict) -> None:
    y = np.repeat(np.arange(K), 5)
    plots = {
        "learning curves": plot_learning_curves(_history(), tmp_path / "curves.png"),
        "roc": plot_roc(y, _probs(y), NAMES, tmp_path / "roc.png"),
        "gone": tmp_path / "missing.png",
    }
    thumb = thumbnail_data_uri(_jpeg())
    path = write_report_html(
        tmp_path / "out" / "report.html",
        title="resnet50 <script>alert(1)</script>",
        summary={"backbone": "resnet50", "weights": "imagenet & co", "data fingerprint": "abc123"},
        metrics=split_metrics,
        plots=plots,
        confusions=[
            {
                "true": "glacier",
                "pred": "mountain",
                "count": 7,
                "examples": [thumb, "http://evil.example/x.jpg"],
            },
        ],
        warnings=["weights are <random>: not transfer learning"],
    )
    text = path.read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "resnet50 &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "imagenet &amp; co" in text and "weights are &lt;random&gt;" in text
    assert text.index('class="warn"') < text.index("<h2>Metrics</h2>")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text, flags=re.I)
    assert refs and all(r.startswith("data:") for r in refs), refs
    assert "evil.example" not in text
    assert "url(" not in text and "@import" not in text
    assert text.count('src="data:image/png;base64,') == 2
    assert thumb in text
    assert "plot missing" in text
    assert "Per class (test)" in text and "glacier → mountain" in text
    lo, hi = split_metrics["test"].ci["accuracy"]
    assert f"[{lo:.3f}, {hi:.3f}]" in text


def test_report_html_shows_collapse(tmp_path: Path) -> None:
    y = np.repeat(np.arange(K), 5)
    bad = evaluate_predictions(y, np.eye(K)[np.full(len(y), 2)], NAMES)
    text = write_report_html(
        tmp_path / "r.html",
        title="t",
        summary={},
        metrics={"test": bad},
        plots={},
        confusions=[],
        warnings=[],
    ).read_text()
    assert "collapsed on test" in text and "&#x27;glacier&#x27;" in text


def test_model_card(tmp_path: Path, split_metrics: dict) -> None:
    path = write_model_card(
        tmp_path / "model_card.md",
        name="resnet50-v3",
        summary={"backbone": "resnet50", "data fingerprint": "f00d"},
        params={"epochs": 50, "lr": 0.001, "sizes": [224, 224], "note": "a|b"},
        metrics=split_metrics,
        warnings=["random init"],
        extra_sections={"Promotion": "challenger beat champion (p=0.01)"},
    )
    md = path.read_text(encoding="utf-8")
    assert md.startswith("# Model card: resnet50-v3")
    assert md.index("random init") < md.index("## Intended use")
    for heading in ("## Training data", "## Parameters", "## Metrics", "## Limitations", "## Promotion"):
        assert heading in md
    assert "`f00d`" in md and "glacier ↔ mountain" in md and "buildings ↔ street" in md
    assert "a\\|b" in md and "[224, 224]" in md
    assert "| metric | val | test |" in md
    assert "Not collapsed" in md or "Collapsed" in md


ROWS = [
    {
        "backbone": "vgg16",
        "weights": "imagenet",
        "strategy": "cached",
        "status": "ok",
        "error": "",
        "test_accuracy": 0.85,
        "test_f1_weighted": 0.851,
        "test_f1_macro": 0.85,
        "test_auc_ovr_weighted": 0.97,
        "val_f1_weighted": 0.86,
        "train_f1_weighted": 0.9,
        "seconds": 12.5,
    },
    {
        "backbone": "efficientnetb0",
        "weights": "imagenet",
        "strategy": "cached",
        "status": "failed",
        "error": "OOM | out of memory\nat step 3",
        "seconds": 3.0,
    },
    {
        "backbone": "resnet50",
        "weights": "imagenet",
        "strategy": "cached",
        "status": "ok",
        "error": "",
        "test_accuracy": 0.91,
        "test_f1_weighted": 0.912,
        "test_f1_macro": 0.91,
        "test_auc_ovr_weighted": 0.99,
        "val_f1_weighted": 0.92,
        "train_f1_weighted": 0.95,
        "seconds": 20.0,
    },
    {
        "backbone": "mobilenetv2",
        "weights": "none",
        "strategy": "online",
        "status": "collapsed",
        "error": "",
        "test_accuracy": 0.17,
        "test_f1_weighted": 0.95,
        "test_f1_macro": 0.05,
        "test_auc_ovr_weighted": 0.5,
        "val_f1_weighted": 0.05,
        "train_f1_weighted": 0.06,
        "seconds": 5.0,
    },
]


def test_comparison_table_ordering() -> None:
    df = comparison_table(ROWS)
    assert list(df["backbone"]) == ["mobilenetv2", "resnet50", "vgg16", "efficientnetb0"]
    assert list(df.columns[:5]) == ["backbone", "weights", "strategy", "status", "error"]
    assert math.isnan(df.loc[3, "test_f1_weighted"])
    assert comparison_table([]).empty


def test_markdown_table() -> None:
    df = pd.DataFrame({"name": ["a|b", "c"], "x": [0.12345, float("nan")], "n": [1, 2]})
    assert markdown_table(df) == (
        "| name | x | n |\n| --- | --- | --- |\n| a\\|b | 0.123 | 1 |\n| c |  | 2 |\n"
    )


def test_write_comparison(tmp_path: Path) -> None:
    csv_path, md_path = write_comparison(ROWS, tmp_path / "cmp")
    assert csv_path.name == "comparison.csv" and md_path.name == "comparison.md"
    back = pd.read_csv(csv_path)
    assert list(back["backbone"])[:3] == ["mobilenetv2", "resnet50", "vgg16"]
    md = md_path.read_text(encoding="utf-8")
    # the collapsed row has the highest F1 but must not be named best
    assert "Best backbone by validation F1 (weighted): resnet50**" in md
    assert "0.912" in md and "0.85" in md
    assert "mobilenetv2 (none, online): random init — not a transfer-learning result" in md
    assert "efficientnetb0" in md and "OOM \\| out of memory at step 3" in md
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table_lines) == 2 + len(ROWS)
    assert all(ln.count(" | ") == table_lines[0].count(" | ") for ln in table_lines[2:])


def test_write_comparison_without_ok_rows(tmp_path: Path) -> None:
    _, md_path = write_comparison(
        [{"backbone": "x", "weights": "imagenet", "strategy": "cached", "status": "failed", "error": "boom"}],
        tmp_path,
    )
    md = md_path.read_text(encoding="utf-8")
    assert "No successful, non-collapsed run" in md and "failed: boom" in md


def test_best_backbone_is_chosen_on_validation_not_test() -> None:
    from scene.evaluation.comparison import best_row

    df = pd.DataFrame([
        {"backbone": "a", "status": "ok", "val_f1_weighted": 0.90, "test_f1_weighted": 0.80},
        {"backbone": "b", "status": "ok", "val_f1_weighted": 0.85, "test_f1_weighted": 0.95},
        {"backbone": "c", "status": "collapsed", "val_f1_weighted": 0.99, "test_f1_weighted": 0.99},
    ])
    assert best_row(df)["backbone"] == "a"
