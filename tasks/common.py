"""What every task and flow shares: settings, the S3 client, the run's folders, progress into Prefect artifacts."""

from __future__ import annotations

import functools
import re
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import exponential_backoff

from scene.data.retries import transient
from scene.data.storage import s3_client
from scene.settings import Settings

# Every task and flow declares a timeout (tests/test_task_policy.py enforces it). Generous: a step that runs past
# its timeout is stuck (a hung connection, a wedged accelerator), not slow.
S3_TIMEOUT_S = 30 * 60  # one step that lists, reads or writes objects (a run's artifacts, a manifest)
STEP_TIMEOUT_S = 12 * 3600  # one compute step on a CPU-only worker: features of ~25k images × views, a head, eval
FLOW_TIMEOUT_S = 24 * 3600  # a whole train-all / retrain (dispatched backbones wait at most dispatch_timeout_s)


F = TypeVar("F", bound=Callable[..., Any])


def termination_in(exc: BaseException) -> TerminationSignal | None:
    """The SIGTERM (Prefect's ``TerminationSignal``) among ``exc``'s causes and contexts, if a library swallowed it.

    TensorFlow and Keras catch everything in places (``except:`` in ``tf.dtypes``, Keras' deserialisation) and
    raise their own error from inside the handler, so an eviction that lands there reads as a ``TypeError``.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, TerminationSignal):
            return e
        seen.add(id(e))
        stack += [e.__cause__, e.__context__]
    return None


def keeps_termination(fn: F) -> F:
    """Wrap a flow function so a SIGTERM a library turned into another error reaches Prefect as the SIGTERM it was:
    an evicted run (``PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule``) is rescheduled, not marked Failed.

    The wrapper is built on ``fn``'s module globals: Prefect resolves a flow's postponed annotations
    (``from __future__ import annotations``) in ``fn.__globals__`` to validate its parameters.
    """

    Find = Callable[[BaseException], TerminationSignal | None]

    def wrap(inner: Callable[..., Any], find: Find) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return inner(*args, **kwargs)
            except Exception as exc:
                signal = find(exc)
                if signal is None:
                    raise
                raise signal from exc

        return wrapper

    made = wrap(fn, termination_in)
    rebuilt = types.FunctionType(made.__code__, fn.__globals__, fn.__name__, made.__defaults__, made.__closure__)
    return functools.wraps(fn)(rebuilt)  # type: ignore[return-value]


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry only errors a later attempt can get past (S3 unreachable, reset, 5xx, SlowDown).

    Errors that cannot succeed on retry — missing weights, failed validation, a tampered file, bad input, a step
    that ran past its timeout — fail the task at once instead of repeating it.
    """
    try:
        state.result()
    except TaskRunTimeoutError:
        return False
    except Exception as err:
        return transient(err)
    return False


# the retry policy of tasks that touch S3: 3 retries after 5, 10, 20 s (±50 %), transient errors only
S3_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=5),
                              "retry_jitter_factor": 0.5, "retry_condition_fn": transient_only}


def settings() -> Settings:
    """Settings of this worker (env vars / ``SCENE_CONFIG``), read once per call site."""
    return Settings.from_env()


def s3(cfg: Settings | None = None) -> Any:
    """An S3 client for the configured endpoint."""
    return s3_client(cfg or settings())


def run_prefix() -> str:
    """``s3://<artifact bucket>/runs/<this flow run's id>/``: where a run's artifacts go."""
    return f"s3://{settings().artifact_bucket}/runs/{flow_run.get_id() or 'local'}/"


def work_folder(backbone: str) -> Path:
    """``<work>/<flow run id>/<backbone>``: concurrent runs on the same data never share a folder."""
    run_id = flow_run.get_id() or f"local-{uuid.uuid4().hex[:12]}"
    return Path(settings().work_dir) / str(run_id) / backbone


PROGRESS_PAUSE_S = 60  # how long progress stays unsent after the API did not answer


class Progress:
    """``progress(stage, done, total)`` → one Prefect progress artifact per stage, plus a log line per 10%."""

    def __init__(self, min_interval: float = 2.0) -> None:
        self.min_interval = min_interval
        self.ids: dict[str, Any] = {}
        self.last: dict[str, tuple[float, int]] = {}
        self.log = get_run_logger()
        self.quiet_until = 0.0  # after a failed call, no progress is sent until then (the API may be restarting)

    def _send(self, stage: str, pct: float, description: str) -> None:
        """Create or update the stage's progress artifact; a failure is logged, never raised (the work goes on)."""
        try:
            if stage not in self.ids:
                key = re.sub(r"[^a-z0-9-]+", "-", stage.lower()).strip("-")
                self.ids[stage] = create_progress_artifact(pct, key=f"progress-{key}", description=description)
            else:
                update_progress_artifact(self.ids[stage], pct, description=description)
        except Exception as err:  # the client already retried for about a minute: the API server is down
            self.quiet_until = time.monotonic() + PROGRESS_PAUSE_S
            self.log.warning("progress of %s not sent to the Prefect API (%s: %s); the work goes on, progress "
                             "resumes in %d s", stage, type(err).__name__, err, PROGRESS_PAUSE_S)

    def __call__(self, stage: str, done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        now = time.monotonic()
        when, decile = self.last.get(stage, (0.0, -1))
        if stage in self.ids and now - when < self.min_interval and done < total:
            return
        if now >= self.quiet_until:
            self._send(stage, pct, f"{stage}: {done}/{total}")
        if int(pct // 10) > decile or done >= total:
            self.log.info("%s: %d/%d (%.0f%%)", stage, done, total, pct)
        self.last[stage] = (now, int(pct // 10))
