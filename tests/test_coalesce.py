"""One retrain per change: the duplicate and superseded verdicts (scene.ops.coalesce), without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scene.ops.coalesce import RunInfo, slot_name, verdict

T0 = datetime(2026, 1, 1, tzinfo=UTC)
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


def test_reconcile_backs_off_on_data_whose_runs_fail_and_retries_new_data_at_once() -> None:
    from scene.ops.reconcile import BACKOFF_BASE, _judge

    now = 1_000_000.0
    rec, wait = _judge(None, "C1", None, now)
    assert wait is None and rec["attempts"] == 0
    rec["announced_at"] = now  # announced; its run failed validation
    failed = ("FAILED", "DatasetError: class 'sea' has 1 image", "run-1")
    rec, wait = _judge(rec, "C1", failed, now + 60)
    assert rec["attempts"] == 1 and wait is not None and "class 'sea' has 1 image" in wait
    rec, wait = _judge(rec, "C1", failed, now + 120)  # the same run's outcome counts once
    assert rec["attempts"] == 1 and wait is not None
    rec, wait = _judge(rec, "C1", failed, now + BACKOFF_BASE + 1)  # the wait is over: try again
    assert wait is None
    rec["announced_at"] = now + BACKOFF_BASE + 1
    rec, wait = _judge(rec, "C1", ("FAILED", "same", "run-2"), now + BACKOFF_BASE + 60)
    assert rec["attempts"] == 2 and rec["next_at"] == now + BACKOFF_BASE + 1 + 2 * BACKOFF_BASE and wait
    rec, wait = _judge(rec, "C1", ("CRASHED", "worker died", "run-3"), now + BACKOFF_BASE + 90)
    assert rec["attempts"] == 2 and wait  # a crash is transient: no more back-off, but the wait stands
    new, wait = _judge(rec, "C2", None, now + BACKOFF_BASE + 100)  # the data changed: announce now
    assert wait is None and new["attempts"] == 0
