"""``scene runs watch RUN_ID``: one live row per backbone of a training run, read with Prefect's own client.

The API URL and credentials are Prefect's settings (``PREFECT_API_URL``, ``PREFECT_API_AUTH_STRING`` or
``PREFECT_API_KEY``: the environment, else the active profile, so ``prefect config set PREFECT_API_URL=...`` works;
``eval "$(scene stack env)"`` exports the local stack's). Prefect's client retries a busy server (429/502/503).
A backbone is a ``train-backbone`` child flow run of the watched run: started in-process (local dispatch) or by
``run_deployment`` on a work pool (GPU dispatch), both are found by their parent flow run. Each row shows the
stage (from the child's task runs), the newest progress artifact (done/total, rate, ETA), and once evaluated its
test F1 (from the child's logs); the run's ``backbone-comparison`` table ends the output. On a terminal the rows
are redrawn in place with ``rich.live.Live`` (one line each, cut to the terminal's width); otherwise a line is
printed when a row changes.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from scene.evaluation import tables

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from rich.console import Console, RenderableType

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# task-run name prefix -> stage shown (flows/train_backbone.py runs them; tasks/*.py name the tasks)
STAGES: tuple[tuple[str, str], ...] = (
    ("load manifest", "manifest"), ("build manifest", "manifest"), ("validate data", "manifest"),
    ("check weights", "manifest"), ("extract features", "features"), ("train head", "head"),
    ("fine-tune", "fine-tune"), ("evaluate", "evaluate"), ("report", "evaluate"), ("upload", "upload"),
    ("write result", "upload"),
)
_TEST_LOG = re.compile(r"test: accuracy (?P<acc>[0-9.]+), weighted F1 (?P<f1>[0-9.]+)(?P<collapsed> — COLLAPSED)?")


class WatchError(RuntimeError):
    """The API cannot be reached, refuses the credentials, or the run does not exist."""


def _json(model: Any) -> dict[str, Any]:
    """A client model as the REST API's JSON (run times in seconds, as the API sends them)."""
    out = model.model_dump(mode="json")
    for key in ("total_run_time", "estimated_run_time"):
        if getattr(model, key, None) is not None:
            out[key] = getattr(model, key).total_seconds()
    return out


class Api:
    """The few reads the watcher makes, through Prefect's synchronous client (:func:`scene.ops.prefect_api.client`).

    ``url``: another API than Prefect's configured one (with the configured credentials).
    """

    def __init__(self, url: str | None = None) -> None:
        from scene.ops import prefect_api

        try:
            self.client: SyncPrefectClient = prefect_api.client(url)
        except ValueError as err:
            raise WatchError(str(err)) from None
        self.url = str(self.client.api_url).rstrip("/")
        self.client.__enter__()
        self._flow_names: dict[str, str] = {}

    def close(self) -> None:
        """Close the client's connections."""
        self.client.__exit__(None, None, None)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Prefect's client errors as one-line :class:`WatchError` messages naming the API and what was read."""
        import httpx
        from prefect.exceptions import ObjectNotFound

        try:
            yield
        except ObjectNotFound as err:
            raise WatchError(f"{self.url}: {what}: not found (404) — check the run id") from err
        except httpx.HTTPStatusError as err:
            status = err.response.status_code
            if status in (401, 403):
                raise WatchError(f"{self.url}: {what}: unauthorized ({status}) — set PREFECT_API_AUTH_STRING (the "
                                 'local stack: eval "$(scene stack env)") or PREFECT_API_KEY (Prefect Cloud)') from err
            raise WatchError(f"{self.url}: {what}: HTTP {status}: {err.response.text[:300]}") from err
        except httpx.HTTPError as err:
            raise WatchError(f"{self.url}: {what}: no answer ({type(err).__name__}: {err}) — is the Prefect server "
                             "up (scene stack status)?") from err

    def flow_run(self, run_id: str) -> dict[str, Any]:
        try:
            rid = uuid.UUID(run_id)
        except ValueError:
            raise WatchError(f"{run_id!r} is not a flow run id (a UUID, as printed by `prefect deployment run` "
                             "or `make run`)") from None
        with self._errors(f"flow run {run_id}"):
            return _json(self.client.read_flow_run(rid))

    def flow_name(self, flow_id: str) -> str:
        """The name of a flow (asked once per flow id)."""
        if flow_id not in self._flow_names:
            with self._errors(f"flow {flow_id}"):
                self._flow_names[flow_id] = self.client.read_flow(uuid.UUID(flow_id)).name
        return self._flow_names[flow_id]

    def children(self, run_id: str) -> list[dict[str, Any]]:
        """Flow runs started by this run's task runs (subflows and ``run_deployment`` runs alike)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
        from prefect.client.schemas.sorting import FlowRunSort

        flt = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(run_id)]))
        with self._errors("child flow runs"):
            runs = self.client.read_flow_runs(flow_run_filter=flt, sort=FlowRunSort.START_TIME_ASC, limit=200)
        return [_json(r) for r in runs]

    def task_runs(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
        from prefect.client.schemas.sorting import TaskRunSort

        flt = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[uuid.UUID(i) for i in run_ids]))
        with self._errors("task runs"):
            runs = self.client.read_task_runs(task_run_filter=flt, sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                                              limit=200)
        return [_json(t) for t in runs]

    def artifacts(self, run_ids: Sequence[str], *, type: list[str] | None = None,
                  key: list[str] | None = None) -> list[dict[str, Any]]:
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            ArtifactFilterKey,
            ArtifactFilterType,
        )
        from prefect.client.schemas.sorting import ArtifactSort

        flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(i) for i in run_ids]))
        if type:
            flt.type = ArtifactFilterType(any_=type)
        if key:
            flt.key = ArtifactFilterKey(any_=key)
        with self._errors("artifacts"):
            found = self.client.read_artifacts(artifact_filter=flt, sort=ArtifactSort.UPDATED_DESC, limit=200)
        return [_json(a) for a in found]

    def logs(self, run_ids: Sequence[str], text: str) -> list[dict[str, Any]]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTextSearch
        from prefect.client.schemas.sorting import LogSort

        flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(i) for i in run_ids]),
                        text=LogFilterTextSearch(query=text))
        with self._errors("logs"):
            found = self.client.read_logs(log_filter=flt, sort=LogSort.TIMESTAMP_DESC, limit=200)
        return [_json(x) for x in found]


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _seconds(s: float | None) -> str:
    """``75`` → ``1m15s``."""
    if s is None:
        return "?"
    n = round(s)
    return f"{n // 3600}h{n % 3600 // 60:02d}m" if n >= 3600 else f"{n // 60}m{n % 60:02d}s" if n >= 60 else f"{n}s"


@dataclass
class Progress:
    """The newest progress artifact of a backbone."""

    stage: str
    done: int
    total: int
    rate: float | None  # items per second

    def text(self) -> str:
        pct = 100.0 * self.done / max(self.total, 1)
        out = f"{self.stage} {self.done}/{self.total} {pct:3.0f}%"
        if self.rate and self.done < self.total:
            out += f" {self.rate:.1f}/s ETA {_seconds((self.total - self.done) / self.rate)}"
        return out


def progress_of(artifact: Mapping[str, Any]) -> Progress | None:
    """``Progress`` from a progress artifact whose description is ``"<stage>: <done>/<total>"`` (tasks.common)."""
    m = re.fullmatch(r"(?P<stage>.+): (?P<done>\d+)/(?P<total>\d+)", str(artifact.get("description") or ""))
    if not m:
        return None
    done, total = int(m["done"]), int(m["total"])
    start, end = _ts(artifact.get("created")), _ts(artifact.get("updated"))
    rate = done / (end - start) if start and end and end > start and done else None
    return Progress(m["stage"], done, total, rate)


def _newest_task_id(task_runs: Sequence[Mapping[str, Any]]) -> str | None:
    started = [t for t in task_runs if t.get("start_time")]
    return max(started, key=lambda t: _ts(t["start_time"]) or 0.0)["id"] if started else None


def stage_of(task_runs: Sequence[Mapping[str, Any]], raw: bool = False) -> str:
    """The stage of the newest task run that started (``waiting`` before any); ``raw``: its task name."""
    started = [t for t in task_runs if t.get("start_time")]
    if not started:
        return "waiting"
    newest = max(started, key=lambda t: _ts(t["start_time"]) or 0.0)
    name = str(newest.get("name", ""))
    if raw:
        return name.rsplit("-", 1)[0] if re.search(r"-\d+$", name) else name
    return next((stage for prefix, stage in STAGES if name.startswith(prefix)), name.rsplit("-", 1)[0])


@dataclass
class Line:
    """What one backbone's line says."""

    backbone: str
    state: str  # the flow run's state type
    state_name: str
    stage: str = "waiting"
    progress: Progress | None = None
    test: dict[str, Any] = field(default_factory=dict)  # {"f1", "accuracy", "collapsed"}
    message: str = ""
    seconds: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def cells(self) -> tuple[str, str]:
        """``(status, detail)``: the mark or stage, then the result, progress or message."""
        f1 = f"test F1 {tables.fmt_metric(self.test['f1'])}" if self.test else ""
        if self.state == "COMPLETED":
            mark = "⚠ collapsed" if self.test.get("collapsed") else "✓ done"
            acc = f" accuracy {tables.fmt_metric(self.test['accuracy'])}" if self.test else ""
            return mark, f"{f1}{acc} in {_seconds(self.seconds)}".strip()
        if self.final:
            return f"✗ {self.state_name.lower()}", tables.shorten(self.message or self.state_name, 90)
        if self.state in ("SCHEDULED", "PENDING"):
            return self.state_name.lower(), "waiting for a worker"
        prog = self.progress.text() if self.progress else ""
        return self.stage, f"{prog}{'  ' + f1 if f1 else ''}"

    def text(self, width: int = 16) -> str:
        """The row as one plain line, the name padded to ``width``."""
        status, detail = self.cells()
        return f"{self.backbone:<{width}} {status:<12} {detail}".rstrip()


def _test_of(logs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    for log in logs:  # newest first
        m = _TEST_LOG.search(str(log.get("message", "")))
        if m:
            return {"f1": float(m["f1"]), "accuracy": float(m["acc"]), "collapsed": bool(m["collapsed"])}
    return {}


def backbone_name(child: Mapping[str, Any]) -> str:
    """The backbone a child run trains: its ``backbone`` parameter, else its name."""
    params = child.get("parameters") or {}
    return str(params.get("backbone") or child.get("name") or child.get("id"))


def planned_backbones(flow: str, parameters: Mapping[str, Any]) -> int | None:
    """How many backbones a ``train-all`` run trains: those its ``params`` (or their preset) name, else the default
    set. None for other flows: a retrain trains its champion's backbone, which its parameters do not say."""
    if flow != "train-all":
        return None
    from scene.train.params import TrainParams

    try:
        return len(TrainParams(**(parameters.get("params") or {})).resolved().names())
    except (TypeError, ValueError):  # parameters this version cannot read: count the backbones seen instead
        return None


def snapshot(api: Api, run_id: str) -> tuple[dict[str, Any], list[Line]]:
    """The run and one :class:`Line` per backbone child run, from four API calls (and the flow's name, once).
    ``run["planned"]``: how many backbones it will train, when its parameters say (:func:`planned_backbones`)."""
    run = api.flow_run(run_id)
    if run.get("flow_id"):
        run["planned"] = planned_backbones(api.flow_name(run["flow_id"]), run.get("parameters") or {})
    children = [c for c in api.children(run_id) if c.get("state_type")]
    ids = [c["id"] for c in children]
    tasks_by: dict[str, list[dict[str, Any]]] = {}
    for t in api.task_runs([run_id, *ids]):
        tasks_by.setdefault(t["flow_run_id"], []).append(t)
    run["stage"] = stage_of(tasks_by.get(run_id, []), raw=True)
    if not ids:
        return run, []
    current = {fid: _newest_task_id(ts) for fid, ts in tasks_by.items()}
    progress_by: dict[str, Progress] = {}
    for a in api.artifacts(ids, type=["progress"]):  # newest first: each run's newest, of its current task only
        p = progress_of(a)
        fid = a["flow_run_id"]
        if p is not None and fid not in progress_by and a.get("task_run_id") == current.get(fid):
            progress_by[fid] = p
    tests: dict[str, list[dict[str, Any]]] = {}
    for log in api.logs(ids, "weighted F1"):
        tests.setdefault(log["flow_run_id"], []).append(log)
    lines = []
    for c in children:
        state = c.get("state") or {}
        lines.append(Line(backbone_name(c), c["state_type"], c.get("state_name") or c["state_type"],
                          stage=stage_of(tasks_by.get(c["id"], [])), progress=progress_by.get(c["id"]),
                          test=_test_of(tests.get(c["id"], [])), message=state.get("message") or "",
                          seconds=c.get("total_run_time")))
    return run, lines


def comparison(api: Api, run_id: str) -> str:
    """The run's ``backbone-comparison`` table artifact as a terminal table ("" when it has none)."""
    found = api.artifacts([run_id], key=["backbone-comparison"])
    if not found:
        return ""
    data = found[0].get("data")
    rows = json.loads(data) if isinstance(data, str) else data
    if not rows:
        return ""
    shown = rows if "test F1" in rows[0] else tables.display_rows(rows)
    return tables.text(shown)


def header(run: Mapping[str, Any], lines: Sequence[Line]) -> str:
    """``<run name> (<id>): <state>[, at <task>], k/n backbones finished``: n is the backbones the run trains when
    known (``run["planned"]``), else those started so far."""
    done = sum(line.final for line in lines)
    what = f"{run.get('name')} ({run['id']})"
    state = str(run.get("state_name") or run.get("state_type")).lower()
    at = f", at {run['stage']}" if run.get("stage") and run.get("state_type") not in FINAL else ""
    total = max(run.get("planned") or 0, len(lines))
    tail = f", {done}/{total} backbones finished" if total else ""
    return f"{what}: {state}{at}{tail}"


def live_view(head: str, lines: Sequence[Line], width: int = 80) -> RenderableType:
    """The live block for a ``width``-column terminal: the header, then a table with one row per backbone (name,
    status, detail); every line is cut (…) to fit instead of wrapping."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    name_width = min(max([8, *(len(line.backbone) for line in lines)]), max(width // 3, 8))
    table = Table(box=None, show_header=False, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("backbone", no_wrap=True, overflow="ellipsis", width=name_width)
    table.add_column("status", no_wrap=True, overflow="ellipsis", width=12)
    table.add_column("detail", no_wrap=True, overflow="ellipsis", width=max(width - name_width - 12 - 3, 8))
    for line in lines:
        table.add_row(line.backbone, *line.cells())
    return Group(Text(head, no_wrap=True, overflow="ellipsis"), table)


class Printer:
    """Live (a terminal): redraw the block in place with ``rich.live.Live``. Otherwise: print a line when its
    state or stage changes, or its progress moved and ``every`` seconds passed (logs and pipes stay readable)."""

    def __init__(self, out: TextIO, live: bool, every: float = 15.0, console: Console | None = None) -> None:
        self.out, self.live, self.every = out, live, every
        self.console = console
        self._live: Any = None
        self.seen: dict[str, tuple[str, float, str]] = {}  # name -> (state key, when, text) last printed

    def show(self, head: str, lines: Sequence[Line], now: float) -> None:
        if self.live:
            if self.console is None:
                from rich.console import Console

                self.console = Console(file=self.out)
            view = live_view(head, lines, self.console.width)
            if self._live is None:
                from rich.live import Live

                self._live = Live(view, console=self.console, auto_refresh=False, redirect_stdout=False,
                                  redirect_stderr=False)
                self._live.start(refresh=True)
            else:
                self._live.update(view, refresh=True)
            return
        width = max([16, *(len(line.backbone) + 1 for line in lines)])
        self._log("", head, head, now)
        for line in lines:
            key = f"{line.state}|{line.stage}|{line.test}"
            self._log(line.backbone, key, line.text(width), now)
        self.out.flush()

    def stop(self) -> None:
        """End the live display (its last drawing stays on the screen)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _log(self, name: str, key: str, text: str, now: float) -> None:
        before = self.seen.get(name)
        if before is not None and before[0] == key and (now - before[1] < self.every or text == before[2]):
            return
        self.seen[name] = (key, now, text)
        self.out.write(text + "\n")


def watch(run_id: str, *, api: Api | None = None, out: TextIO | None = None, interval: float = 2.0,
          timeout: float | None = None, live: bool | None = None,
          clock: Callable[[], float] = time.monotonic) -> int:
    """Follow the run until it is final; print the comparison table and the UI link. 0 when it Completed, else 1."""
    own = api is None
    api = api or Api()
    out = out or sys.stdout
    printer = Printer(out, out.isatty() if live is None else live)
    started = clock()
    try:
        while True:
            run, lines = snapshot(api, run_id)
            printer.show(header(run, lines), lines, clock())
            if run.get("state_type") in FINAL:
                break
            if timeout is not None and clock() - started > timeout:
                raise WatchError(f"run {run_id} not finished after {timeout:g} s (--timeout); it keeps running")
            time.sleep(interval)
        printer.stop()
        table = comparison(api, run_id)
    finally:
        printer.stop()
        if own:
            api.close()
    if table:
        out.write("\n" + table)
    state = run.get("state") or {}
    if run.get("state_type") != "COMPLETED" and state.get("message"):
        out.write(f"\n{run.get('state_name')}: {state['message']}\n")
    out.write(f"\nPrefect UI: {api.url.removesuffix('/api')}/runs/flow-run/{run_id}\n")
    out.flush()
    return 0 if run.get("state_type") == "COMPLETED" else 1
