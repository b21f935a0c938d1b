"""One retrain per change: which retrain run ends early, as a duplicate or as superseded (no Prefect import).

Every announcement of one state of a dataset carries one change id (:func:`scene.ops.prefect_events.change_id`),
and the deployment trigger passes it to the run as ``change_id``. Prefect cannot give trigger-created runs an
idempotency key (``RunDeployment``'s key is per automation firing, and the server forgets seen event ids on a
restart), so the runs sort it out among themselves at start and again once they hold their dataset's slot:

* **duplicate**: an *earlier* run has the same change id and is not Failed, Crashed or Cancelled (that run
  trains this change, or trained it, or was superseded by a run that trains newer data);
* **superseded**: a *later* run for the same data is still waiting or running and is not itself a duplicate
  (it trains the same data or newer; with several waiting, only the newest trains).

Both end Completed with the reason in the state message and the result (not Cancelled: nothing went wrong,
and a Cancelled run would look like an operator's doing in the UI and in alerts). The newest run of a burst
always trains, so nothing announced is left untrained unless that run fails (then the reconcile announces it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

GIVEN_UP = {"FAILED", "CRASHED", "CANCELLED"}  # a run in these states handles nothing
WAITING = {"SCHEDULED", "PENDING", "RUNNING", "PAUSED"}  # AwaitingConcurrencySlot is a SCHEDULED state


@dataclass(frozen=True)
class RunInfo:
    """What the verdict needs of one retrain flow run."""

    id: str
    name: str
    created: datetime
    state_type: str  # "RUNNING", "COMPLETED", ... (Prefect StateType value)
    data: str | None
    change_id: str | None

    def before(self, other: RunInfo) -> bool:
        """Created earlier (ties broken by id, so two runs never both come first)."""
        return (self.created, self.id) < (other.created, other.id)


def is_duplicate(run: RunInfo, runs: Iterable[RunInfo]) -> RunInfo | None:
    """The earlier run that already handles ``run``'s change, or None."""
    if not run.change_id:
        return None
    for other in sorted(runs, key=lambda r: (r.created, r.id)):
        if other.id != run.id and other.change_id == run.change_id and other.before(run) \
                and other.state_type not in GIVEN_UP:
            return other
    return None


def verdict(me: RunInfo, runs: list[RunInfo]) -> tuple[str, str] | None:
    """``("duplicate" | "superseded", reason)`` when ``me`` should end now without training, else None."""
    earlier = is_duplicate(me, runs)
    if earlier is not None:
        return "duplicate", (f"run {earlier.name} ({earlier.id}, {earlier.state_type.lower()}) already handles "
                             f"change {me.change_id} of {me.data}")
    for other in runs:
        if other.id == me.id or other.data != me.data or not me.before(other) or other.state_type not in WAITING:
            continue
        if is_duplicate(other, runs) is None:
            return "superseded", (f"newer run {other.name} ({other.id}, {other.state_type.lower()}) trains {me.data} "
                                  f"as it is now (change {other.change_id or 'unnamed'})")
    return None


def slot_name(data: str) -> str:
    """The global concurrency limit of one dataset's trainings: ``retrain:<readable slug>-<hash>``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", data.removeprefix("s3://")).strip("-")[-60:]
    return f"retrain:{slug}-{hashlib.sha256(data.encode()).hexdigest()[:8]}"
