"""Table formatting: 3 decimals, whole seconds, reading order, short weights labels, failed/collapsed marked."""

from __future__ import annotations

from pathlib import Path

from scene.evaluation import summary, tables
from scene.evaluation.comparison import write_comparison

ROWS = [
    {"backbone": "resnet50", "weights": "imagenet", "strategy": "cached", "status": "ok", "error": "",
     "test_accuracy": 0.4666666666666667, "test_f1_weighted": 0.91234, "test_f1_macro": 0.9,
     "test_auc_ovr_weighted": 0.99, "val_f1_weighted": 0.8, "train_f1_weighted": 0.95, "seconds": 412.64},
    {"backbone": "vgg16", "weights": "/home/me/weights/vgg16_custom.weights.h5", "strategy": "cached",
     "status": "collapsed", "error": "", "test_accuracy": 0.17, "test_f1_weighted": 0.05, "seconds": 7.4},
    {"backbone": "efficientnetb0", "weights": "s3://scene-artifacts/weights-mirror/b0.weights.h5",
     "strategy": "online", "status": "failed", "error": "ResourceExhaustedError: OOM when allocating " + "x" * 200,
     "test_accuracy": float("nan"), "seconds": None},
]


def test_display_row_formats_numbers_and_columns() -> None:
    row = tables.display_row(ROWS[0])
    assert list(row) == ["backbone", "status", "test F1", "accuracy", "AUC", "val F1", "seconds", "weights", "note"]
    assert row["accuracy"] == "0.467" and row["test F1"] == "0.912" and row["AUC"] == "0.990"
    assert row["seconds"] == "413" and row["weights"] == "imagenet" and row["status"] == "ok"


def test_weights_labels_and_marks() -> None:
    collapsed, failed = tables.display_rows(ROWS[1:])
    assert collapsed["weights"] == "vgg16_custom.weights.h5" and collapsed["status"] == "⚠ collapsed"
    assert failed["weights"] == "b0.weights.h5" and failed["status"] == "✗ failed"
    assert failed["accuracy"] == "" and failed["seconds"] == ""
    assert failed["note"].startswith("ResourceExhaustedError: OOM") and len(failed["note"]) == tables.NOTE_WIDTH
    assert tables.weights_label("NONE") == "none" and tables.weights_label(None) == ""
    assert "note" not in tables.display_rows(ROWS[:1])[0]  # no row needs a note: no empty column


def test_markdown_and_text_tables() -> None:
    shown = tables.display_rows(ROWS)
    md = tables.markdown(shown).splitlines()
    assert md[0] == "| backbone | status | test F1 | accuracy | AUC | val F1 | seconds | weights | note |"
    assert md[2].startswith("| resnet50 | ok | 0.912 | 0.467 | 0.990 | 0.800 | 413 | imagenet |")
    assert len(md) == 2 + len(ROWS)
    text = tables.text(shown).splitlines()
    assert text[0].split() == ["backbone", "status", "test", "F1", "accuracy", "AUC", "val", "F1", "seconds",
                               "weights", "note"]
    assert len(text[1]) == max(len(line) for line in text)  # the rule spans the widest row: columns line up
    assert "✗ failed" in text[4] and "0.4666666" not in "".join(text)


def test_comparison_md_uses_the_display_format(tmp_path: Path) -> None:
    _, md_path = write_comparison(ROWS, tmp_path)
    md = md_path.read_text(encoding="utf-8")
    assert "| resnet50 | ok | 0.912 | 0.467 |" in md
    assert "0.4666666666666667" not in md and "/home/me/weights" not in md and "412.64" not in md
    assert "| vgg16 | ⚠ collapsed |" in md and "| efficientnetb0 | ✗ failed |" in md
    assert "(vgg16_custom.weights.h5, cached): collapsed" in md


def test_training_summary_names_winner_and_decision() -> None:
    md = summary.training("train-all", {"data": "s3://d/x/"}, ROWS, {
        "promoted": False, "challenger": "resnet50-abc", "decision": {"reason": "not significantly better"}},
        {"comparison.md": "https://h/c.md", "artifacts": "s3://a/runs/1/"})
    assert ("**Best on validation: resnet50** — validation F1 (weighted) 0.800; on test F1 (weighted) 0.912, "
            "accuracy 0.467 (imagenet weights)") in md
    assert "Promotion: resnet50-abc **not promoted** — not significantly better." in md
    assert "completed, 1 of 3 backbones ✗ failed" in md
    assert "- [comparison.md](https://h/c.md)" in md and "- artifacts: `s3://a/runs/1/`" in md
    assert summary.promotion_line(None).startswith("Promotion: not attempted")


def test_training_summary_headlines_the_validation_choice_not_the_test_best() -> None:
    better_on_val = {**ROWS[0], "backbone": "mobilenetv2", "test_f1_weighted": 0.85, "test_accuracy": 0.84,
                     "val_f1_weighted": 0.9}
    md = summary.training("train-all", {}, [*ROWS, better_on_val], None, {})
    assert "**Best on validation: mobilenetv2**" in md and "Best on test" not in md


def test_runs_show_text_reads_the_csv(tmp_path: Path) -> None:
    from scene.cli.ops import comparison_text

    csv_path, md_path = write_comparison(ROWS, tmp_path)
    out = comparison_text(csv_path.read_bytes(), md_path.read_text(encoding="utf-8"))
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["backbone", "status", "test"]
    assert lines[2].split() == ["resnet50", "ok", "0.912", "0.467", "0.990", "0.800", "413", "imagenet"]
    assert "collapsed: never promoted" in lines[3] and "nan" not in out
    assert "**Best backbone by validation F1 (weighted): resnet50**" in out and "| backbone |" not in out
