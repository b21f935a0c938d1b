"""The process supervisor of the local stack: detached services, PID files, logs, health waits.

Each service runs in its own session (process group), output appended to ``<state>/logs/<service>.log``,
its PID and command line in ``<state>/pids/<service>.pid``. A PID file whose process died, became a zombie
or now runs another command counts as not running. Stopping sends SIGTERM to the group, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # every service listens on loopback only
_LOG_TAIL_LINES = 25
# Popen objects of the services this process started, kept so they are not garbage-collected
# (which warns) and so down() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """The local stack could not be started, found or stopped; the message says which service and why."""


def state_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir).expanduser().resolve()



def pid_file(state: Path, service: str) -> Path:
    return state / "pids" / f"{service}.pid"


def log_file(state: Path, service: str) -> Path:
    return state / "logs" / f"{service}.log"


def find_bin(name: str) -> str:
    """An executable from the running interpreter's environment (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    import shutil

    found = shutil.which(name)
    if not found:
        raise StackError(f"{name!r} not found next to {sys.executable} or on PATH; install the project")
    return found


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """Serialize up/down on one state folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(state / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise StackError(f"{path}: cannot read: {err}") from err


def write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)



def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int, argv: list[str] | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, where /proc says, still runs the recorded command."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    if argv:
        cmd = _cmdline(pid)
        # Scripts run through their interpreter, and juicefs rewrites its own command line (it masks the
        # metadata URL): compare the first arguments after the program, wherever they start.
        # (its rewritten title is one space-separated string, so compare text, not list items)
        if cmd is not None and " ".join(argv[1:3]) not in " ".join(cmd):
            return False
    return True


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far, from ``/proc`` (0 when unknown)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def running(state: Path, service: str) -> int | None:
    """The pid of a running service, or None (removing a stale PID file)."""
    path = pid_file(state, service)
    info = read_json(path) if path.exists() else {}
    pid = info.get("pid")
    if isinstance(pid, int) and alive(pid, info.get("argv")):
        return pid
    path.unlink(missing_ok=True)
    return None


def spawn(state: Path, service: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    """Start a detached service in its own session, output appended to its log, and record its PID."""
    log = log_file(state, service)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file(state, service).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n--- {service} starting at {datetime.now(UTC).isoformat()} ---\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    write_json(pid_file(state, service), {"pid": proc.pid, "argv": argv, "started": time.time()})
    return proc.pid


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stop(state: Path, service: str, timeout: float = 15.0) -> bool:
    """Terminate a service's process group (SIGTERM, then SIGKILL after ``timeout``); True if it ran."""
    pid = running(state, service)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid) and _group_gone(pid):
                break
            time.sleep(0.1)
        else:
            continue
        break
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    pid_file(state, service).unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def port_free(port: int, wait: float = 0.0) -> bool:
    """Whether ``port`` can be bound on ``HOST``, polling for up to ``wait`` seconds.

    A service killed a moment ago still listens until its last thread has exited (its pid already reads as
    dead): ``wait`` covers that, so a restart right after a crash does not report the port as taken.
    """
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT after a restart is not "taken"
            try:
                sock.bind((HOST, port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.1)


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DO_NOT_TRACK"] = "1"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    for var in ("NO_PROXY", "no_proxy"):  # loopback never goes through a proxy
        parts = [p for p in env.get(var, "").split(",") if p]
        env[var] = ",".join([*parts, *(h for h in ("127.0.0.1", "localhost") if h not in parts)])
    return env



def wait_healthy(state: Path, service: str, pid: int, healthy: Any, timeout: float, what: str) -> float:
    """Poll ``healthy()`` until true; raise with the service's log tail if it exits or times out."""
    start = time.monotonic()
    child = _CHILDREN.get(pid)
    while True:
        if healthy():
            return time.monotonic() - start
        if not alive(pid):
            code = child.returncode if child is not None else None
            pid_file(state, service).unlink(missing_ok=True)
            raise StackError(
                f"{what} exited{f' with code {code}' if code is not None else ''} while starting; "
                f"last lines of {log_file(state, service)}:\n{tail(log_file(state, service))}"
            )
        if time.monotonic() - start > timeout:
            stop(state, service, timeout=5)
            raise StackError(
                f"{what} did not become healthy within {timeout:.0f}s (stopped it); "
                f"last lines of {log_file(state, service)}:\n{tail(log_file(state, service))}"
            )
        time.sleep(0.2)

