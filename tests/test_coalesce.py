"""One retrain per change: the duplicate and superseded verdicts (scene.ops.coalesce), without a server."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from scene.ops.coalesce import RunInfo, slot_name, verdict

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
D = "s3://scene-data/datasets/a/"


def run(i: int, change: str | None, state: str = "SCHEDULED", data: str = D) -> RunInfo:
    return RunInfo(id=f"r{i}", name=f"run-{i}", created=T0 + timedelta(seconds=i), state_type=state, data=data,
                   change_id=change)


def survivors(runs: list[RunInfo]) -> list[str]:
    """Play the runs in creation order (each one checks when it starts); the ids that train."""
    runs = list(runs)
    trained = []
    for i, me in enumerate(runs):
        if me.state_type != "SCHEDULED":
            continue
        me = runs[i] = RunInfo(me.id, me.name, me.created, "RUNNING", me.data, me.change_id)
        if verdict(me, runs) is None:
            trained.append(me.id)
        runs[i] = RunInfo(me.id, me.name, me.created, "COMPLETED", me.data, me.change_id)
    return trained


def test_a_burst_of_one_change_trains_once() -> None:
    runs = [run(0, "X"), run(1, "X"), run(2, "X")]
    assert survivors(runs) == ["r0"]
    kind, reason = verdict(runs[1], runs)  # type: ignore[misc]
    assert kind == "duplicate" and "run-0" in reason


def test_waiting_runs_collapse_to_the_newest_change() -> None:
    assert survivors([run(0, "X"), run(1, "Y"), run(2, "Z")]) == ["r2"]
    kind, reason = verdict(run(0, "X", "RUNNING"), [run(0, "X", "RUNNING"), run(1, "Y")])  # type: ignore[misc]
    assert kind == "superseded" and "run-1" in reason


def test_a_late_duplicate_never_supersedes_the_change_that_has_to_train() -> None:
    """X, Y, then a resend of X: Y must train (the resend is a duplicate, not newer data)."""
    assert survivors([run(0, "X"), run(1, "Y"), run(2, "X")]) == ["r1"]


def test_failed_runs_do_not_count_and_other_datasets_are_independent() -> None:
    runs = [run(0, "X", "FAILED"), run(1, "X"), run(2, "Q", data="s3://scene-data/datasets/b/")]
    assert verdict(runs[1], runs) is None
    assert verdict(run(5, None), [run(5, None), run(6, None, "COMPLETED")]) is None  # finished: not waiting


def test_slot_names_are_valid_and_distinct() -> None:
    a, b = slot_name(D), slot_name("s3://scene-data/datasets/a b/")
    assert a.startswith("retrain:scene-data-datasets-a-") and a != b
    assert not any(c in a + b for c in "/%&<>")
