"""The local stack: a real S3 server, a Prefect server and process workers, all on 127.0.0.1.

``up()`` starts (or reuses) three kinds of detached background processes, each in its own process group,
with every piece of state under one folder (default ``.state/``)::

    .state/credentials.json   S3 access/secret key, generated once, mode 0600 (never printed or logged)
    .state/stack.json         ports, pools, buckets, workdir: what down/status/env need to know
    .state/s3/                JuiceFS volume: meta.db (SQLite metadata), blobs/ (object data), cache/
    .state/webhook-queue/     undelivered bucket notifications (replayed when the receiver comes back)
    .state/prefect/           PREFECT_HOME of the server and the workers (prefect.db lives here)
    .state/logs/<service>.log stdout/stderr of each service; .state/pids/<service>.pid

Services: ``s3`` (``juicefs gateway``, the MinIO-based S3 gateway), ``prefect`` (``prefect server start``)
and ``worker-<pool>`` (``prefect worker start --pool <pool> --type process``, one per pool). Workers run in
``workdir`` with ``PREFECT_API_URL``, ``AWS_ENDPOINT_URL``, the S3 credentials and ``SCENE_*_BUCKET`` in
their environment, so the flow runs they start reach this stack's S3 server. Data persists across
``down()``/``up()``. Measured on a 2-core machine: the gateway is healthy 0.2 s after start; the Prefect
server 10-14 s after its first start (it creates its database), about 5 s on later starts; creating a
work pool with the CLI takes about 3 s; a worker heartbeats 2-3 s after start. A cold ``up()`` takes
15-19 s, a restart about 8 s, a repeated ``up()`` on a healthy stack under 0.1 s, ``down()`` about 1 s.
Each ``up()`` records how long it waited for each service in ``stack.json`` (``last_up_wait_s``).
If a service fails, ``up()`` raises :class:`StackError` with its log tail and leaves the others running
(``down()`` stops them).

Bucket notifications (for the event bridge). When ``up(webhook_url=..., webhook_token=...)`` is given,
the gateway is started with MinIO's ``MINIO_NOTIFY_WEBHOOK_*_PRIMARY`` settings and a queue folder, and
:func:`configure_bucket_notification` subscribes a bucket prefix (one rule per suffix; the gateway accepts
several rules with the same prefix and different suffixes) to ``s3:ObjectCreated:*``. Observed delivery:
one HTTP ``POST`` per object to the configured URL, headers ``Content-Type: application/json`` and
``Authorization: Bearer <token>`` (the token is sent with a ``Bearer`` prefix), body in MinIO format::

    {"EventName": "s3:ObjectCreated:Put",
     "Key": "scene-data/datasets/x/a.jpg",                 # bucket/key, not URL-encoded
     "Records": [{"eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
                  "eventTime": "2026-11-28T13:55:15.611Z", "eventName": "s3:ObjectCreated:Put",
                  "userIdentity": {"principalId": "<access key>"},
                  "requestParameters": {...}, "responseElements": {...},
                  "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                         "bucket": {"name": "scene-data", "arn": "arn:aws:s3:::scene-data", ...},
                         "object": {"key": "datasets%2Fx%2Fa.jpg",     # URL-encoded (unquote it)
                                    "size": 2, "eTag": "49f6...", "sequencer": "18EC...",
                                    "userMetadata": {"content-type": "binary/octet-stream"}}},
                  "source": {"host": "127.0.0.1", "port": "", "userAgent": "Boto3/..."}}]}

Multipart uploads arrive as ``s3:ObjectCreated:CompleteMultipartUpload``. Events for a receiver that is
down are kept in ``webhook-queue/`` and delivered when it answers again. A notification configuration
is stored with the bucket and survives restarts. Objects outside the prefix/suffixes send nothing.

Nothing here imports prefect: the Prefect server is reached over HTTP and driven with its CLI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scene.settings import Settings
from scene.storage import StorageError, explain

WEBHOOK_ARN = "arn:minio:sqs::PRIMARY:webhook"
HOST = "127.0.0.1"
S3 = "s3"
PREFECT = "prefect"
EVENTS = "events"  # the storage-event bridge (scene events serve)
_GATEWAY_TIMEOUT = 60.0
_WORKER_TIMEOUT = 90.0
_LOG_TAIL_LINES = 25
# Popen objects of the services this process started, kept so they are not garbage-collected
# (which warns) and so down() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """The local stack could not be started, found or stopped; the message says which service and why."""


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack is reachable."""

    state_dir: Path
    s3_endpoint: str  # http://127.0.0.1:PORT
    prefect_api_url: str  # http://127.0.0.1:PORT/api
    ports: dict[str, int] = field(default_factory=dict)  # {"s3": 9000, "prefect": 4200}
    pids: dict[str, int] = field(default_factory=dict)  # service name -> process (group) id


# --------------------------------------------------------------------------------------------- paths


def _state(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir).expanduser().resolve()


def _worker(pool: str) -> str:
    return f"worker-{pool}"


def _pid_file(state: Path, service: str) -> Path:
    return state / "pids" / f"{service}.pid"


def _log_file(state: Path, service: str) -> Path:
    return state / "logs" / f"{service}.log"


def _bin(name: str) -> str:
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
def _lock(state: Path) -> Iterator[None]:
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise StackError(f"{path}: cannot read: {err}") from err


def _write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _config(state: Path) -> dict[str, Any]:
    """The recorded stack config; raises when the folder holds no stack."""
    cfg = _read_json(state / "stack.json")
    if not cfg:
        raise StackError(f"{state}: no local stack here (no stack.json); start one with `scene stack up`")
    return cfg


# --------------------------------------------------------------------------------------- credentials


def _credentials(state: Path, *, create: bool = False) -> dict[str, str]:
    """The S3 access/secret key pair, generated on first use and kept in a 0600 file."""
    path = state / "credentials.json"
    if path.exists():
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        creds = _read_json(path)
        if not creds.get("access_key") or not creds.get("secret_key"):
            raise StackError(f"{path}: expected keys access_key and secret_key; delete it to regenerate")
        return creds
    if not create:
        raise StackError(f"{path}: missing; start the stack with `scene stack up` to create credentials")
    access = secrets.token_urlsafe(12)  # 16 chars (MinIO: 3..20)
    while not access[0].isalnum():  # a leading '-' confuses command-line tools
        access = secrets.token_urlsafe(12)
    creds = {"access_key": access, "secret_key": secrets.token_urlsafe(30)}  # 40 chars (MinIO: 8..40)
    _write_json(path, creds, mode=0o600)
    return creds


def _mask(value: str) -> str:
    return value[:4] + "…"


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int, argv: list[str] | None = None) -> bool:
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


def _running(state: Path, service: str) -> int | None:
    """The pid of a running service, or None (removing a stale PID file)."""
    path = _pid_file(state, service)
    info = _read_json(path) if path.exists() else {}
    pid = info.get("pid")
    if isinstance(pid, int) and _alive(pid, info.get("argv")):
        return pid
    path.unlink(missing_ok=True)
    return None


def _spawn(state: Path, service: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    """Start a detached service in its own session, output appended to its log, and record its PID."""
    log = _log_file(state, service)
    log.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(state, service).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n--- {service} starting at {datetime.now(timezone.utc).isoformat()} ---\n".encode())
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
    _write_json(_pid_file(state, service), {"pid": proc.pid, "argv": argv, "started": time.time()})
    return proc.pid


def _group_gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _stop(state: Path, service: str, timeout: float = 15.0) -> bool:
    """Terminate a service's process group (SIGTERM, then SIGKILL after ``timeout``); True if it ran."""
    pid = _running(state, service)
    if pid is None:
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid) and _group_gone(pid):
                break
            time.sleep(0.1)
        else:
            continue
        break
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    _pid_file(state, service).unlink(missing_ok=True)
    return True


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT after a restart is not "taken"
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _base_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DO_NOT_TRACK"] = "1"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    for var in ("NO_PROXY", "no_proxy"):  # loopback never goes through a proxy
        parts = [p for p in env.get(var, "").split(",") if p]
        env[var] = ",".join([*parts, *(h for h in ("127.0.0.1", "localhost") if h not in parts)])
    return env


# ---------------------------------------------------------------------------------------------- HTTP

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, parsed JSON or text); status 0 when the server cannot be reached."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def _s3_healthy(port: int) -> bool:
    return _http("GET", f"http://{HOST}:{port}/minio/health/live", timeout=2)[0] == 200


def _prefect_healthy(port: int) -> bool:
    status, body = _http("GET", f"http://{HOST}:{port}/api/health", timeout=3)
    return status == 200 and body is True


def _parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _worker_record(api: str, pool: str, name: str) -> dict[str, Any] | None:
    status, body = _http("POST", f"{api}/work_pools/{urllib.parse.quote(pool)}/workers/filter", {})
    if status != 200 or not isinstance(body, list):
        return None
    return next((w for w in body if w.get("name") == name), None)


def _worker_healthy(api: str, pool: str, name: str, since: float = 0.0) -> bool:
    record = _worker_record(api, pool, name)
    return (
        record is not None
        and record.get("status") == "ONLINE"
        and _parse_time(record.get("last_heartbeat_time")) >= since - 1.0
    )


def _wait(state: Path, service: str, pid: int, healthy: Any, timeout: float, what: str) -> float:
    """Poll ``healthy()`` until true; raise with the service's log tail if it exits or times out."""
    start = time.monotonic()
    child = _CHILDREN.get(pid)
    while True:
        if healthy():
            return time.monotonic() - start
        if not _alive(pid):
            code = child.returncode if child is not None else None
            _pid_file(state, service).unlink(missing_ok=True)
            raise StackError(
                f"{what} exited{f' with code {code}' if code is not None else ''} while starting; "
                f"last lines of {_log_file(state, service)}:\n{_tail(_log_file(state, service))}"
            )
        if time.monotonic() - start > timeout:
            _stop(state, service, timeout=5)
            raise StackError(
                f"{what} did not become healthy within {timeout:.0f}s (stopped it); "
                f"last lines of {_log_file(state, service)}:\n{_tail(_log_file(state, service))}"
            )
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ services


def _start_gateway(state: Path, port: int, creds: dict[str, str], webhook: dict[str, Any] | None,
                   webhook_token: str | None) -> int:
    juicefs = _bin("juicefs")
    vol = state / "s3"
    meta = f"sqlite3://{vol / 'meta.db'}"
    env = {k: v for k, v in _base_env().items() if not k.startswith("MINIO_")}
    if not (vol / "meta.db").exists():
        vol.mkdir(parents=True, exist_ok=True)
        argv = [juicefs, "format", "--storage", "file", "--bucket", f"{vol / 'blobs'}/", "--trash-days", "0",
                "--no-update", meta, "scene"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            (vol / "meta.db").unlink(missing_ok=True)
            lines = "\n".join((done.stdout + done.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
            raise StackError(f"juicefs format of {vol} failed (exit {done.returncode}):\n{lines}")
    env["MINIO_ROOT_USER"] = creds["access_key"]
    env["MINIO_ROOT_PASSWORD"] = creds["secret_key"]
    if webhook:
        queue = state / "webhook-queue"
        queue.mkdir(parents=True, exist_ok=True)
        env["MINIO_NOTIFY_WEBHOOK_ENABLE_PRIMARY"] = "on"
        env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_PRIMARY"] = webhook["url"]
        env["MINIO_NOTIFY_WEBHOOK_QUEUE_DIR_PRIMARY"] = str(queue)
        if webhook_token:
            env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_PRIMARY"] = webhook_token
    argv = [juicefs, "gateway", "--multi-buckets", "--keep-etag", "--object-meta", "--no-usage-report",
            "--backup-meta", "0", "--metrics", f"{HOST}:0", "--log", str(_log_file(state, S3)),
            "--cache-dir", str(vol / "cache"), meta, f"{HOST}:{port}"]
    return _spawn(state, S3, argv, env, cwd=state)


def _start_prefect(state: Path, port: int) -> int:
    env = _base_env()
    env["PREFECT_HOME"] = str(state / "prefect")
    env["PREFECT_API_URL"] = f"http://{HOST}:{port}/api"
    argv = [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    return _spawn(state, PREFECT, argv, env, cwd=state)


DOCKER_POOL = "docker"  # `--pool docker`: a Docker work pool (prefect-docker worker) running the scene image
DOCKER_TEMPLATE = Path(__file__).resolve().parents[1] / "deployments" / "docker-cpu.json"


def _pool_type(pool: str) -> str:
    return "docker" if pool == DOCKER_POOL else "process"


def _docker_pool_template(state: Path, env: Mapping[str, str]) -> list[str]:
    """The docker pool's `work-pool create` arguments: deployments/docker-cpu.json with this stack's S3 settings.

    Checks that Docker answers and prefect-docker is installed. The credentials go into the pool's job
    template (the stack's Prefect server only listens on 127.0.0.1), never into the image.
    """
    import importlib.util
    import shutil

    if importlib.util.find_spec("prefect_docker") is None:
        raise StackError("--pool docker needs prefect-docker: pip install -e '.[docker]'")
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                           timeout=30, check=False) if docker else None
    if probe is None or probe.returncode != 0:
        why = "no docker client on PATH" if probe is None else (probe.stderr or probe.stdout).strip()[-300:]
        raise StackError(f"--pool docker: no Docker daemon answers ({why}); start one (sudo deployments/dockerd.sh)")
    template = json.loads(DOCKER_TEMPLATE.read_text())
    props = template["variables"]["properties"]
    keep = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "SCENE_DATA_BUCKET", "SCENE_ARTIFACT_BUCKET", "SCENE_DATA_PREFIX")
    props["env"]["default"] = {**{k: env[k] for k in keep if k in env}, "PREFECT_HOME": "/tmp/prefect"}
    props["image"]["default"] = env.get("SCENE_DOCKER_IMAGE", props["image"]["default"])
    path = state / "docker-pool.json"
    _write_json(path, template, mode=0o600)
    return ["--base-job-template", str(path)]


def _ensure_pools(api: str, pools: tuple[str, ...], env: dict[str, str], state: Path) -> None:
    """Create the missing process work pools (the CLI fills in the process worker's job template).

    The docker pool is (re)created on every call, so its template carries the stack's current settings.
    """
    missing = []
    for pool in pools:
        status, body = _http("GET", f"{api}/work_pools/{urllib.parse.quote(pool)}")
        if status == 404 or pool == DOCKER_POOL:
            missing.append(pool)
        elif status != 200:
            raise StackError(f"work pool {pool!r}: the Prefect API at {api} answered {status}: {body}")
    procs = {
        pool: subprocess.Popen(
            [_bin("prefect"), "work-pool", "create", pool, "--type", _pool_type(pool), "--overwrite",
             *(_docker_pool_template(state, env) if pool == DOCKER_POOL else [])],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for pool in missing
    }
    for pool, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            text = "\n".join(out.decode(errors="replace").strip().splitlines()[-_LOG_TAIL_LINES:])
            raise StackError(f"creating work pool {pool!r} failed (exit {proc.returncode}):\n{text}")


def _s3_env(cfg: dict[str, Any], creds: dict[str, str]) -> dict[str, str]:
    """The variables that point boto3 and :class:`Settings` at this stack."""
    return {
        "PREFECT_API_URL": f"http://{HOST}:{cfg['prefect_port']}/api",
        "AWS_ENDPOINT_URL": f"http://{HOST}:{cfg['s3_port']}",
        "AWS_ACCESS_KEY_ID": creds["access_key"],
        "AWS_SECRET_ACCESS_KEY": creds["secret_key"],
        "AWS_DEFAULT_REGION": cfg["region"],
        "SCENE_DATA_BUCKET": cfg["data_bucket"],
        "SCENE_ARTIFACT_BUCKET": cfg["artifact_bucket"],
        "SCENE_DATA_PREFIX": cfg["data_prefix"],
    }


def _ensure_buckets(settings: Settings) -> None:
    from scene.storage import s3_client

    s3 = s3_client(settings)
    for bucket in dict.fromkeys((settings.data_bucket, settings.artifact_bucket)):
        try:
            s3.head_bucket(Bucket=bucket)
            continue
        except Exception:  # 404 (missing) or anything else: try to create, which reports clearly
            pass
        try:
            s3.create_bucket(Bucket=bucket)
        except Exception as err:
            code = getattr(err, "response", {}).get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StackError(str(explain(err, f"s3://{bucket}", settings.s3_endpoint_url))) from err


# ---------------------------------------------------------------------------------------- public API


def _events_token(state: Path, creds: dict[str, str]) -> dict[str, str]:
    """The event bridge's bearer token, generated once and kept in the 0600 credentials file."""
    if not creds.get("events_token"):
        creds = {**creds, "events_token": secrets.token_urlsafe(24)}
        _write_json(state / "credentials.json", creds, mode=0o600)
    return creds


def _events_healthy(port: int) -> bool:
    try:
        code, _ = _http("GET", f"http://{HOST}:{port}/health", timeout=2.0)
    except Exception:
        return False
    return code == 200


def _start_events(state: Path, cfg: dict[str, Any], creds: dict[str, str], env: dict[str, str], api: str,
                  workdir: Path) -> float:
    """Start (or keep) ``scene events serve`` and wait until it answers its health check."""
    port = cfg["events_port"]
    if _running(state, EVENTS) and not _events_healthy(port):
        _stop(state, EVENTS)
    pid = _running(state, EVENTS)
    if pid is None:
        argv = [_bin("scene"), "events", "serve", "--port", str(port), "--bucket", cfg["data_bucket"],
                "--prefix", cfg["data_prefix"], "--quiet-seconds", str(cfg["quiet_seconds"])]
        ev_env = {**env, "PREFECT_API_URL": api, "SCENE_EVENTS_TOKEN": creds["events_token"]}
        pid = _spawn(state, EVENTS, argv, ev_env, cwd=workdir)
    return _wait(state, EVENTS, pid, lambda: _events_healthy(port), 60.0, f"event bridge on port {port}")


def up(
    state_dir: str | os.PathLike[str] = ".state",
    *,
    s3_port: int = 9000,
    prefect_port: int = 4200,
    pools: tuple[str, ...] = ("default",),
    workdir: str | os.PathLike[str] | None = None,
    webhook_url: str | None = None,
    webhook_token: str | None = None,
    extra: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    timeout: float = 180.0,
    events_port: int | None = None,
    quiet_seconds: float = 30.0,
) -> StackInfo:
    """Start the stack (or reuse the running parts) and wait until every service is healthy.

    ``pools``: process work pools to create, one worker each. ``workdir``: the workers' working directory
    (default: the current directory). ``webhook_url``/``webhook_token``: enable bucket notifications to
    that URL (the gateway is restarted if this changes). ``extra``: additional environment variables for
    the workers. ``settings``: bucket names and data prefix (default ``Settings()``). ``timeout``: seconds
    to wait for the Prefect server. ``events_port``: also run the event bridge (``scene events serve``) there,
    wire the gateway's webhook to it (token generated once, kept with the credentials) and subscribe the data
    prefix; ``quiet_seconds``: its quiet period. Raises :class:`StackError` with the failing service's log tail.
    """
    state = _state(state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = settings or Settings()
    pools = tuple(dict.fromkeys(pools))
    with _lock(state):
        old = _read_json(state / "stack.json")
        creds = _credentials(state, create=True)
        if events_port is not None:
            creds = _events_token(state, creds)
            webhook_url, webhook_token = f"http://{HOST}:{events_port}/notify", creds["events_token"]
        webhook = {"url": webhook_url, "token": _sha(webhook_token) if webhook_token else None} \
            if webhook_url else None
        workdir_path = Path(workdir).resolve() if workdir is not None else Path.cwd()
        cfg: dict[str, Any] = {
            "s3_port": s3_port,
            "prefect_port": prefect_port,
            "pools": list(dict.fromkeys([*(p for p in old.get("pools", []) if _running(state, _worker(p))),
                                         *pools])),
            "workdir": str(workdir_path),
            "webhook": webhook,
            "region": base.aws_region,
            "data_bucket": base.data_bucket,
            "artifact_bucket": base.artifact_bucket,
            "data_prefix": base.data_prefix,
            "workers": dict(old.get("workers", {})),
            "events_port": events_port,
            "quiet_seconds": quiet_seconds,
        }
        ports = {S3: s3_port, PREFECT: prefect_port}
        for service, port in ports.items():
            key = f"{service}_port"
            if _running(state, service) and old.get(key) not in (None, port):
                raise StackError(
                    f"{state}: {service} already runs on port {old[key]}, not {port}; "
                    f"run `scene stack down` first or pass --{service.replace('_', '-')}-port {old[key]}"
                )
        if _running(state, S3) and old.get("webhook") != webhook:
            _stop(state, S3)  # webhook settings are read at gateway start
        for service, port in ports.items():
            if not _running(state, service) and not _port_free(port):
                raise StackError(f"port {HOST}:{port} for {service} is taken by another program; pick one")
        _write_json(state / "stack.json", cfg)

        pid_s3 = _running(state, S3) or _start_gateway(state, s3_port, creds, webhook, webhook_token)
        pid_pf = _running(state, PREFECT) or _start_prefect(state, prefect_port)
        timings: dict[str, float] = {}
        timings[S3] = _wait(state, S3, pid_s3, lambda: _s3_healthy(s3_port), _GATEWAY_TIMEOUT,
                            f"S3 gateway on port {s3_port}")
        stack_settings = _settings(cfg, creds, base)
        _ensure_buckets(stack_settings)
        api = f"http://{HOST}:{prefect_port}/api"
        timings[PREFECT] = _wait(state, PREFECT, pid_pf, lambda: _prefect_healthy(prefect_port), timeout,
                                 f"Prefect server on port {prefect_port}")

        env = _base_env()
        env.update(_s3_env(cfg, creds))
        env["PREFECT_HOME"] = str(state / "prefect")
        env["SCENE_STATE_DIR"] = str(state)
        _ensure_pools(api, pools, env, state)
        env.update(extra or {})
        worker_sha = _sha({"workdir": cfg["workdir"], "env": dict(extra or {}), "cfg": _s3_env(cfg, creds)})
        started: dict[str, tuple[int, float, str]] = {}
        for pool in pools:
            service = _worker(pool)
            if _running(state, service) and cfg["workers"].get(pool, {}).get("config") != worker_sha:
                _stop(state, service)
            if _running(state, service):
                continue
            name = f"scene-{pool}"
            argv = [_bin("prefect"), "worker", "start", "--pool", pool, "--type", _pool_type(pool), "--name", name,
                    "--install-policy", "never"]
            since = time.time()
            started[pool] = (_spawn(state, service, argv, env, cwd=workdir_path), since, name)
            cfg["workers"][pool] = {"name": name, "config": worker_sha}
        _write_json(state / "stack.json", cfg)
        for pool, (pid, since, name) in started.items():
            timings[_worker(pool)] = _wait(
                state, _worker(pool), pid, lambda p=pool, n=name, s=since: _worker_healthy(api, p, n, s),
                _WORKER_TIMEOUT, f"Prefect worker for pool {pool!r}")
        if events_port is not None:
            timings[EVENTS] = _start_events(state, cfg, creds, env, api, workdir_path)
            from scene.metadata import IMAGE_SUFFIXES
            from scene.storage import s3_client

            configure_bucket_notification(s3_client(stack_settings), base.data_bucket, base.data_prefix,
                                          (*IMAGE_SUFFIXES, "_READY"))
        cfg["last_up_wait_s"] = {k: round(v, 2) for k, v in timings.items()}  # seconds each was waited for
        _write_json(state / "stack.json", cfg)
        return _info(state, cfg)


def down(state_dir: str | os.PathLike[str] = ".state") -> list[str]:
    """Stop every service of the stack (workers, then Prefect, then S3); return the ones that ran."""
    state = _state(state_dir)
    if not state.is_dir():
        return []
    with _lock(state):
        cfg = _read_json(state / "stack.json")
        pid_dir = state / "pids"
        known = sorted(p.stem for p in pid_dir.glob("*.pid")) if pid_dir.is_dir() else []
        workers = [s for s in known if s.startswith("worker-")]
        workers += [_worker(p) for p in cfg.get("pools", []) if _worker(p) not in workers]
        stopped = [s for s in (EVENTS, *workers) if _stop(state, s, timeout=10)]
        stopped += [s for s in (PREFECT, S3) if _stop(state, s)]
        return stopped


def status(state_dir: str | os.PathLike[str] = ".state") -> dict[str, Any]:
    """Each service's state: ``{"services": {name: {running, pid, url, healthy, log}}, ...}``."""
    state = _state(state_dir)
    cfg = _read_json(state / "stack.json")
    result: dict[str, Any] = {"state_dir": str(state), "exists": bool(cfg), "services": {}}
    if not cfg:
        return result
    with contextlib.suppress(StackError):
        result["access_key"] = _mask(_credentials(state)["access_key"])
    api = f"http://{HOST}:{cfg['prefect_port']}/api"
    services: dict[str, Any] = result["services"]
    pid = _running(state, S3)
    services[S3] = {"running": pid is not None, "pid": pid, "url": f"http://{HOST}:{cfg['s3_port']}",
                    "healthy": pid is not None and _s3_healthy(cfg["s3_port"]),
                    "log": str(_log_file(state, S3))}
    pid = _running(state, PREFECT)
    prefect_ok = pid is not None and _prefect_healthy(cfg["prefect_port"])
    services[PREFECT] = {"running": pid is not None, "pid": pid, "url": api, "healthy": prefect_ok,
                         "log": str(_log_file(state, PREFECT))}
    for pool in cfg.get("pools", []):
        service = _worker(pool)
        pid = _running(state, service)
        name = cfg.get("workers", {}).get(pool, {}).get("name", f"scene-{pool}")
        services[service] = {
            "running": pid is not None, "pid": pid, "url": f"{api}/work_pools/{pool}",
            "healthy": pid is not None and prefect_ok and _worker_healthy(api, pool, name),
            "log": str(_log_file(state, service)),
        }
    if cfg.get("events_port"):
        pid = _running(state, EVENTS)
        services[EVENTS] = {"running": pid is not None, "pid": pid, "url": f"http://{HOST}:{cfg['events_port']}",
                            "healthy": pid is not None and _events_healthy(cfg["events_port"]),
                            "log": str(_log_file(state, EVENTS))}
    result["healthy"] = all(s["healthy"] for s in services.values())
    result["buckets"] = [cfg["data_bucket"], cfg["artifact_bucket"]]
    return result


def env_lines(state_dir: str | os.PathLike[str] = ".state") -> list[str]:
    """Shell ``export`` lines pointing Prefect, boto3 and :class:`Settings` at the stack.

    The only place the S3 secret is printed: meant for ``eval "$(scene stack env)"``.
    """
    state = _state(state_dir)
    cfg = _config(state)
    creds = _credentials(state)
    env = _s3_env(cfg, creds)
    if creds.get("events_token"):
        env["SCENE_EVENTS_TOKEN"] = creds["events_token"]  # for `scene data upload --wait-bridge`
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def _settings(cfg: dict[str, Any], creds: dict[str, str], base: Settings) -> Settings:
    return base.replace(
        s3_endpoint_url=f"http://{HOST}:{cfg['s3_port']}",
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        aws_region=cfg["region"],
        data_bucket=cfg["data_bucket"],
        artifact_bucket=cfg["artifact_bucket"],
        data_prefix=cfg["data_prefix"],
    )


def settings_for(state_dir: str | os.PathLike[str] = ".state", base: Settings | None = None) -> Settings:
    """``base`` (default ``Settings()``) with the endpoint, credentials and buckets of the stack."""
    state = _state(state_dir)
    return _settings(_config(state), _credentials(state), (base or Settings()).replace(state_dir=str(state)))


def _info(state: Path, cfg: dict[str, Any]) -> StackInfo:
    pids = {s: pid for s in (S3, PREFECT, *(_worker(p) for p in cfg["pools"])) if (pid := _running(state, s))}
    return StackInfo(
        state_dir=state,
        s3_endpoint=f"http://{HOST}:{cfg['s3_port']}",
        prefect_api_url=f"http://{HOST}:{cfg['prefect_port']}/api",
        ports={S3: cfg["s3_port"], PREFECT: cfg["prefect_port"]},
        pids=pids,
    )


def info(state_dir: str | os.PathLike[str] = ".state") -> StackInfo:
    """The :class:`StackInfo` of an already running stack (raises if the folder holds none)."""
    state = _state(state_dir)
    return _info(state, _config(state))


def configure_bucket_notification(
    s3: Any, bucket: str, prefix: str = "", suffixes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Send ``s3:ObjectCreated:*`` events under ``prefix`` (ending in one of ``suffixes``) to the webhook.

    Replaces the bucket's whole notification configuration (one rule per suffix, or one prefix-only rule).
    The gateway must have been started with ``up(webhook_url=...)``. Returns the configuration set.
    """
    rules = []
    for i, suffix in enumerate(suffixes or (None,)):
        filters = [{"Name": "prefix", "Value": prefix}] if prefix else []
        if suffix:
            filters.append({"Name": "suffix", "Value": suffix})
        rule: dict[str, Any] = {"Id": f"scene-{i}", "QueueArn": WEBHOOK_ARN, "Events": ["s3:ObjectCreated:*"]}
        if filters:
            rule["Filter"] = {"Key": {"FilterRules": filters}}
        rules.append(rule)
    config = {"QueueConfigurations": rules}
    try:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    except Exception as err:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
        endpoint = getattr(getattr(s3, "meta", None), "endpoint_url", None)
        if code in ("InvalidArgument", "InvalidARNNotification", "ARNNotFound"):
            raise StorageError(
                f"s3://{bucket}/{prefix} (endpoint {endpoint}): the server has no webhook target "
                f"{WEBHOOK_ARN}; start the stack with a webhook URL ({code}: {err})"
            ) from err
        raise explain(err, f"s3://{bucket}/{prefix}", endpoint) from err
    return config
