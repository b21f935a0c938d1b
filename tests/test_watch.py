"""The watch's reading of Prefect API records (the live run is tested in tests/integration/test_flows.py)."""

from __future__ import annotations

import re

from scene.ops import watch


def test_progress_rate_and_eta_from_a_progress_artifact() -> None:
    p = watch.progress_of({"description": "train head resnet50: 6/30", "created": "2026-01-01T00:00:00Z",
                           "updated": "2026-01-01T00:00:03+00:00"})
    assert p is not None and (p.stage, p.done, p.total, p.rate) == ("train head resnet50", 6, 30, 2.0)
    assert p.text() == "train head resnet50 6/30  20% 2.0/s ETA 12s"
    assert watch.progress_of({"description": "not a progress text"}) is None


def test_stage_is_the_newest_started_task() -> None:
    runs = [{"id": "a", "name": "extract features vgg16", "start_time": "2026-01-01T00:00:01Z"},
            {"id": "b", "name": "train head vgg16", "start_time": "2026-01-01T00:00:09Z"},
            {"id": "c", "name": "evaluate vgg16", "start_time": None}]
    assert watch.stage_of(runs) == "head" and watch.stage_of([]) == "waiting"
    assert watch.stage_of([{"name": "validate data-357", "start_time": "2026-01-01T00:00:01Z"}], raw=True) == \
        "validate data"


def test_lines_say_final_state_and_test_f1() -> None:
    done = watch.Line("vgg16", "COMPLETED", "Completed", test={"f1": 0.91234, "accuracy": 0.9, "collapsed": False},
                      seconds=75)
    assert done.text() == "vgg16            ✓ done       test F1 0.912 accuracy 0.900 in 1m15s"
    failed = watch.Line("b0", "FAILED", "Failed", message="OOM")
    assert failed.text().split() == ["b0", "✗", "failed", "OOM"]
    assert watch._test_of([{"message": "vgg16 test: accuracy 0.125, weighted F1 0.028 — COLLAPSED: one class"}]) \
        == {"f1": 0.028, "accuracy": 0.125, "collapsed": True}


def test_the_header_counts_the_backbones_a_run_will_train_not_those_started() -> None:
    assert watch.planned_backbones("train-all", {"params": {"backbones": ["vgg16", "resnet50"]}}) == 2
    assert watch.planned_backbones("train-all", {"data": "s3://d/", "params": {}}) == 4  # the default set
    assert watch.planned_backbones("train-all", {"params": {"preset": "best-cpu"}}) == 1  # the preset's
    assert watch.planned_backbones("retrain", {"params": {}}) is None  # the champion's backbone: not in parameters
    lines = [watch.Line("resnet50", "COMPLETED", "Completed"), watch.Line("vgg16", "RUNNING", "Running")]
    run = {"name": "brave-fox", "id": "r1", "state_type": "RUNNING", "state_name": "Running", "planned": 4}
    assert watch.header(run, lines) == "brave-fox (r1): running, 1/4 backbones finished"
    assert watch.header({**run, "planned": None}, lines) == "brave-fox (r1): running, 1/2 backbones finished"
    assert watch.header(run, []) == "brave-fox (r1): running, 0/4 backbones finished"


def _rows() -> list[watch.Line]:
    long = "ResourceExhaustedError: OOM when allocating tensor with shape[64,1280,7,7] and type float " * 2
    return [watch.Line("efficientnetv2-b0-long-name", "FAILED", "Failed", message=long),
            watch.Line("resnet50", "RUNNING", "Running", stage="features",
                       progress=watch.Progress("extract features resnet50", 640, 1000, 32.0),
                       test={"f1": 0.5, "accuracy": 0.5, "collapsed": False}),
            watch.Line("vgg16", "SCHEDULED", "Scheduled")]


def test_the_live_view_is_one_line_per_backbone_cut_to_80_columns() -> None:
    import io

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=False, color_system=None)
    head = "a-very-long-run-name-that-goes-on (0f6c3c0e-9d1a-4c55-8f0e-2b4f1d2a9e77): running, 1/3 backbones finished"
    console.print(watch.live_view(head, _rows()))
    lines = buf.getvalue().rstrip("\n").split("\n")
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines), lines
    assert [line.split()[0] for line in lines[1:]] == ["efficientnetv2-b0-long-na…", "resnet50", "vgg16"]
    assert lines[0].endswith("…") and "✗ failed" in lines[1] and lines[1].endswith("…") and "640/1000" in lines[2]


def test_live_mode_redraws_with_rich_and_plain_mode_prints_changes() -> None:
    import io

    from rich.console import Console

    buf = io.StringIO()
    printer = watch.Printer(buf, live=True, console=Console(file=buf, width=80, force_terminal=True,
                                                             color_system=None))
    printer.show("run (r1): running", _rows(), 0.0)
    printer.show("run (r1): running", _rows(), 1.0)
    printer.stop()
    drawn = buf.getvalue()
    assert "\x1b[2K" in drawn and "\x1b[1A" in drawn  # rich's Live erased and redrew the measured block
    shown = [part for part in re.split(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n", drawn) if part]
    assert all(len(line) <= 80 for line in shown) and shown.count("run (r1): running") == 3, shown
    plain = io.StringIO()
    printer = watch.Printer(plain, live=False)
    printer.show("run (r1): running", _rows(), 0.0)
    printer.show("run (r1): running", _rows(), 1.0)  # nothing changed: nothing printed again
    assert "\x1b" not in plain.getvalue() and len(plain.getvalue().splitlines()) == 4
