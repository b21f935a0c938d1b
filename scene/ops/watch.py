"""``scene runs watch RUN_ID``: one live line per backbone of a training run, read from the Prefect REST API.

Talks HTTP to ``PREFECT_API_URL`` (``eval "$(scene stack env)"`` sets it) with :mod:`scene.ops.http` and never
imports Prefect.
A backbone is a ``train-backbone`` child flow run of the watched run: started in-process (local dispatch) or by
``run_deployment`` on a work pool (GPU dispatch), both are found by their parent flow run. Each line shows the
stage (from the child's task runs), the newest progress artifact (done/total, rate, ETA), and once evaluated its
test F1 (from the child's logs); the run's ``backbone-comparison`` table ends the output.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from scene.evaluation import tables
from scene.ops import http

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
    """The API cannot be reached, or the run does not exist."""


class Api:
    """The few Prefect REST endpoints the watcher reads."""

    def __init__(self, url: str | None = None, timeout: float = 15.0) -> None:
        url = url or os.environ.get("PREFECT_API_URL")
        if not url:
            raise WatchError('PREFECT_API_URL is not set: run eval "$(scene stack env)" (the local stack) or export '
                             "the URL of your Prefect server's API, e.g. http://127.0.0.1:4200/api")
        # an auth-string server (the local stack: PREFECT_API_AUTH_STRING from `scene stack env`) or Prefect Cloud
        self.headers = http.auth_headers(os.environ.get("PREFECT_API_KEY"), os.environ.get("PREFECT_API_AUTH_STRING"))
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._flow_names: dict[str, str] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            status, answer = http.call(method, self.url + path, body, headers=self.headers, timeout=self.timeout)
        except http.Unreachable as err:
            raise WatchError(f"{self.url}{path}: {err} — is the Prefect server up (scene stack status)?") from err
        if status == 404:
            raise WatchError(f"{self.url}{path}: not found (404) — check the run id")
        if status == 401:
            raise WatchError(f"{self.url}{path}: unauthorized (401) — set PREFECT_API_AUTH_STRING (the local stack: "
                             'eval "$(scene stack env)") or PREFECT_API_KEY (Prefect Cloud)')
        if status >= 400:
            raise WatchError(f"{self.url}{path}: HTTP {status}: {str(answer)[:300]}")
        return answer

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/flow_runs/{run_id}")

    def flow_name(self, flow_id: str) -> str:
        """The name of a flow (asked once per flow id)."""
        if flow_id not in self._flow_names:
            self._flow_names[flow_id] = str(self._call("GET", f"/flows/{flow_id}").get("name") or "")
        return self._flow_names[flow_id]

    def children(self, run_id: str) -> list[dict[str, Any]]:
        """Flow runs started by this run's task runs (subflows and ``run_deployment`` runs alike)."""
        return self._call("POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}},
                                                        "sort": "START_TIME_ASC", "limit": 200})

    def task_runs(self, run_ids: Sequence[str]) -> list[dict[str, Any]]:
        return self._call("POST", "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": list(run_ids)}},
                                                        "sort": "EXPECTED_START_TIME_ASC", "limit": 200})

    def artifacts(self, run_ids: Sequence[str], **match: list[str]) -> list[dict[str, Any]]:
        flt: dict[str, Any] = {"flow_run_id": {"any_": list(run_ids)}}
        flt.update({k: {"any_": v} for k, v in match.items()})
        return self._call("POST", "/artifacts/filter", {"artifacts": flt, "sort": "UPDATED_DESC", "limit": 200})

    def logs(self, run_ids: Sequence[str], text: str) -> list[dict[str, Any]]:
        return self._call("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": list(run_ids)},
                                                            "text": {"query": text}},
                                                   "sort": "TIMESTAMP_DESC", "limit": 200})


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

    def text(self, width: int = 16) -> str:
        head = f"{self.backbone:<{width}}"
        f1 = f"test F1 {tables.fmt_metric(self.test['f1'])}" if self.test else ""
        if self.state == "COMPLETED":
            mark = "⚠ collapsed" if self.test.get("collapsed") else "✓ done"
            acc = f" accuracy {tables.fmt_metric(self.test['accuracy'])}" if self.test else ""
            return f"{head} {mark:<12} {f1}{acc} in {_seconds(self.seconds)}".rstrip()
        if self.final:
            return f"{head} ✗ {self.state_name.lower():<10} {tables.shorten(self.message or self.state_name, 90)}"
        if self.state in ("SCHEDULED", "PENDING"):
            return f"{head} {self.state_name.lower():<12} waiting for a worker"
        prog = self.progress.text() if self.progress else ""
        return f"{head} {self.stage:<12} {prog}{'  ' + f1 if f1 else ''}".rstrip()


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


class Printer:
    """Live: redraw the block in place on a terminal. Otherwise: print a line when its state or stage changes,
    or its progress moved and ``every`` seconds passed (logs and pipes stay readable)."""

    def __init__(self, out: TextIO, live: bool, every: float = 15.0) -> None:
        self.out, self.live, self.every = out, live, every
        self.drawn = 0
        self.seen: dict[str, tuple[str, float, str]] = {}  # name -> (state key, when, text) last printed

    def show(self, head: str, lines: Sequence[Line], now: float) -> None:
        width = max([16, *(len(line.backbone) + 1 for line in lines)])
        if self.live:
            block = [head, *(line.text(width) for line in lines)]
            up = f"\x1b[{self.drawn}F\x1b[J" if self.drawn else ""
            self.out.write(up + "\n".join(block) + "\n")
            self.drawn = len(block)
        else:
            self._log("", head, head, now)
            for line in lines:
                key = f"{line.state}|{line.stage}|{line.test}"
                self._log(line.backbone, key, line.text(width), now)
        self.out.flush()

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
    api = api or Api()
    out = out or sys.stdout
    printer = Printer(out, out.isatty() if live is None else live)
    started = clock()
    while True:
        run, lines = snapshot(api, run_id)
        printer.show(header(run, lines), lines, clock())
        if run.get("state_type") in FINAL:
            break
        if timeout is not None and clock() - started > timeout:
            raise WatchError(f"run {run_id} not finished after {timeout:g} s (--timeout); it keeps running")
        time.sleep(interval)
    table = comparison(api, run_id)
    if table:
        out.write("\n" + table)
    state = run.get("state") or {}
    if run.get("state_type") != "COMPLETED" and state.get("message"):
        out.write(f"\n{run.get('state_name')}: {state['message']}\n")
    out.write(f"\nPrefect UI: {api.url.removesuffix('/api')}/runs/flow-run/{run_id}\n")
    out.flush()
    return 0 if run.get("state_type") == "COMPLETED" else 1
