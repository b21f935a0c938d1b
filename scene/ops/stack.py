"""The local stack: a real S3 server, a Prefect server and process workers, all on 127.0.0.1.

``up()`` starts (or reuses) three kinds of detached background processes, each in its own process group,
with every piece of state under one folder (default ``.state/``)::

    .state/credentials.json   S3 access/secret key and the Prefect API auth string, generated once, mode 0600
                              (never printed or logged; `scene stack env` exports them for clients)
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
The Prefect server requires authentication (``PREFECT_SERVER_API_AUTH_STRING``, generated at the first ``up()``
and kept): workers, the bridge and the stack's own API calls send it (``PREFECT_API_AUTH_STRING``); a request
without it gets 401 (only ``GET /api/health`` is open). A server started without it is restarted with it.
Each workload has its own S3 identity on the gateway (:mod:`scene.ops.iam`, created at ``up()``): the workers and
their flow runs ``scene-workers``, the bridge ``scene-bridge``, presigned links ``scene-links`` (read-only); the
root pair stays with the person (``scene stack env``).
Flow runs the workers start heartbeat every 30 s (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``); ``up()`` keeps one
automation that marks a run silent for 10 min Crashed (its worker died with it): no run stays Running forever.
Workers poll for scheduled runs every 2 s (``PREFECT_WORKER_QUERY_SECONDS``; Prefect's default is 10 s).
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
import logging
import os
import secrets
import shlex
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scene.ops import iam, orphans, prefect_api
from scene.ops.services import (
    EVENTS,
    HEARTBEAT_S,
    PREFECT,
    S3,
    configure_bucket_notification,
    ensure_buckets,
    ensure_pools,
    ensure_zombie_automation,
    events_healthy,
    pool_type,
    prefect_healthy,
    s3_env,
    s3_healthy,
    start_events,
    start_gateway,
    start_prefect,
    worker_healthy,
)
from scene.ops.supervisor import (
    HOST,
    StackError,
    base_env,
    find_bin,
    locked,
    log_file,
    port_free,
    read_json,
    running,
    spawn,
    state_path,
    stop,
    wait_healthy,
    write_json,
)
from scene.settings import Settings

__all__ = ["EVENTS", "HOST", "PREFECT", "S3", "StackError", "StackInfo", "configure_bucket_notification", "down",
           "env_lines", "info", "settings_for", "status", "up"]
_GATEWAY_TIMEOUT = 60.0
log = logging.getLogger("scene.stack")
_WORKER_TIMEOUT = 90.0


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack is reachable."""

    state_dir: Path
    s3_endpoint: str  # http://127.0.0.1:PORT
    prefect_api_url: str  # http://127.0.0.1:PORT/api
    ports: dict[str, int] = field(default_factory=dict)  # {"s3": 9000, "prefect": 4200}
    pids: dict[str, int] = field(default_factory=dict)  # service name -> process (group) id


def _config(state: Path) -> dict[str, Any]:
    """The recorded stack config; raises when the folder holds no stack."""
    cfg = read_json(state / "stack.json")
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
        creds = read_json(path)
        if not creds.get("access_key") or not creds.get("secret_key"):
            raise StackError(f"{path}: expected keys access_key and secret_key; delete it to regenerate")
        return creds
    if not create:
        raise StackError(f"{path}: missing; start the stack with `scene stack up` to create credentials")
    access = secrets.token_urlsafe(12)  # 16 chars (MinIO: 3..20)
    while not access[0].isalnum():  # a leading '-' confuses command-line tools
        access = secrets.token_urlsafe(12)
    creds = {"access_key": access, "secret_key": secrets.token_urlsafe(30)}  # 40 chars (MinIO: 8..40)
    write_json(path, creds, mode=0o600)
    return creds


def _mask(value: str) -> str:
    return value[:4] + "…"


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _prefect_auth(state: Path, creds: dict[str, str]) -> dict[str, str]:
    """The Prefect server's auth string (``scene:<random>``), generated once and kept in the 0600 credentials file."""
    if not creds.get("prefect_auth_string"):
        creds = {**creds, "prefect_auth_string": "scene:" + secrets.token_urlsafe(24)}
        write_json(state / "credentials.json", creds, mode=0o600)
    return creds


def _identities(state: Path, creds: dict[str, Any]) -> dict[str, Any]:
    """One S3 identity per workload role (:data:`scene.ops.iam.ROLES`), generated once into the credentials file."""
    ids = dict(creds.get("identities") or {})
    missing = [role for role in iam.ROLES if not ids.get(role)]
    for role in missing:
        access = "scene" + secrets.token_hex(6)  # 17 chars (MinIO: 3..20), never the root key
        ids[role] = {"access_key": access, "secret_key": secrets.token_urlsafe(30)}
    if missing:
        creds = {**creds, "identities": ids}
        write_json(state / "credentials.json", creds, mode=0o600)
    return creds


def _role_env(creds: dict[str, Any], role: str) -> dict[str, str]:
    """The AWS key variables of one workload's identity (the root pair when the stack has none)."""
    keys = (creds.get("identities") or {}).get(role) or creds
    return {"AWS_ACCESS_KEY_ID": keys["access_key"], "AWS_SECRET_ACCESS_KEY": keys["secret_key"]}


def _workers_env(cfg: dict[str, Any], creds: dict[str, Any]) -> dict[str, str]:
    """What the workers (and the flow runs they start) get: the workers' identity, and the read-only links
    identity that signs presigned URLs (``SCENE_LINK_*``, read by :func:`scene.data.storage.presigned_url`)."""
    env = {**_client_env(cfg, creds), **_role_env(creds, "scene-workers")}
    links = _role_env(creds, "scene-links")
    env["SCENE_LINK_ACCESS_KEY_ID"], env["SCENE_LINK_SECRET_ACCESS_KEY"] = (links["AWS_ACCESS_KEY_ID"],
                                                                          links["AWS_SECRET_ACCESS_KEY"])
    return env


def _ensure_iam(state: Path, cfg: dict[str, Any], creds: dict[str, Any], gateway_started: bool) -> None:
    """Create the workload identities and their policies on the gateway (when it just started or they changed)."""
    docs = iam.policies(cfg["data_bucket"], cfg["artifact_bucket"], cfg["data_prefix"])
    ids = {role: creds["identities"][role] for role in iam.ROLES}
    digest = _sha({"docs": docs, "ids": {r: k["access_key"] for r, k in ids.items()}})
    path = state / "iam.json"
    if not gateway_started and read_json(path).get("sha") == digest:
        return
    try:
        iam.ensure_identities(f"http://{HOST}:{cfg['s3_port']}", creds["access_key"], creds["secret_key"],
                              cfg["region"], ids, docs)
    except (iam.IamError, OSError) as err:
        raise StackError(f"creating the workload S3 identities on the gateway failed: {err}") from err
    write_json(path, {"sha": digest})


def _client_env(cfg: dict[str, Any], creds: dict[str, str]) -> dict[str, str]:
    """:func:`s3_env` plus ``PREFECT_API_AUTH_STRING``: what every client of this stack needs."""
    env = s3_env(cfg, creds)
    if creds.get("prefect_auth_string"):
        env["PREFECT_API_AUTH_STRING"] = creds["prefect_auth_string"]
    return env


def _api(cfg: dict[str, Any], creds: dict[str, str]) -> str:
    """The stack's Prefect API URL, with its auth string registered for this process's requests to it."""
    api = f"http://{HOST}:{cfg['prefect_port']}/api"
    prefect_api.register_auth(api, auth_string=creds.get("prefect_auth_string"))
    return api


def _events_token(state: Path, creds: dict[str, str]) -> dict[str, str]:
    """The event bridge's bearer token, generated once and kept in the 0600 credentials file."""
    if not creds.get("events_token"):
        creds = {**creds, "events_token": secrets.token_urlsafe(24)}
        write_json(state / "credentials.json", creds, mode=0o600)
    return creds


def gpu_count(gpus: int | None = None) -> int:
    """The number of GPUs the ``gpu`` pool serves: ``gpus``, else ``SCENE_GPUS``, else 1."""
    text = str(gpus) if gpus is not None else os.environ.get("SCENE_GPUS") or "1"
    if not text.isdigit() or int(text) < 1:
        raise StackError(f"SCENE_GPUS/--gpus {text!r}: pass the number of GPUs the gpu pool serves (1 or more)")
    return int(text)


def _worker(pool: str) -> str:
    return f"worker-{pool}"


def _plan(state: Path, old: dict[str, Any], base: Settings, ports: dict[str, int], pools: tuple[str, ...],
          workdir: Path, webhook: dict[str, Any] | None, events_port: int | None,
          quiet_seconds: float) -> dict[str, Any]:
    """The stack config to record, after checking that the ports can be used (stops a gateway to rewire it)."""
    for service, port in ports.items():
        key = f"{service}_port"
        if running(state, service) and old.get(key) not in (None, port):
            raise StackError(f"{state}: {service} already runs on port {old[key]}, not {port}; "
                             f"run `scene stack down` first or pass --{service}-port {old[key]}")
    if running(state, S3) and old.get("webhook") != webhook:
        stop(state, S3)  # webhook settings are read at gateway start
    for service, port in ports.items():
        if not running(state, service) and not port_free(port, wait=10.0):  # a just-killed one lets go
            raise StackError(f"port {HOST}:{port} for {service} is taken by another program; pick one")
    kept = [p for p in old.get("pools", []) if running(state, _worker(p))]
    return {"s3_port": ports[S3], "prefect_port": ports[PREFECT], "pools": list(dict.fromkeys([*kept, *pools])),
            "workdir": str(workdir), "webhook": webhook, "region": base.aws_region, "data_bucket": base.data_bucket,
            "artifact_bucket": base.artifact_bucket, "data_prefix": base.data_prefix,
            "workers": dict(old.get("workers", {})), "events_port": events_port, "quiet_seconds": quiet_seconds}


def _start_servers(state: Path, cfg: dict[str, Any], creds: dict[str, str], webhook_token: str | None,
                   base: Settings, timeout: float) -> dict[str, float]:
    """Start (or keep) the S3 gateway and the Prefect server; create the buckets; seconds waited for each."""
    webhook = cfg["webhook"]
    s3_port, prefect_port = cfg["s3_port"], cfg["prefect_port"]
    gateway_started = not running(state, S3)
    pid_s3 = running(state, S3) or start_gateway(state, s3_port, creds, webhook, webhook_token)
    if running(state, PREFECT) and cfg.get("prefect_auth") != (old_auth := _started_auth(state)):
        log.warning("restarting the Prefect server to require its auth string (started with %s)",
                    "another one" if old_auth else "none")
        stop(state, PREFECT)
        stop(state, EVENTS)  # the bridge's environment lacks the new string: restarted by up()
    pid_pf = running(state, PREFECT) or start_prefect(state, prefect_port, creds.get("prefect_auth_string"))
    _started_auth(state, cfg.get("prefect_auth"))
    timings = {S3: wait_healthy(state, S3, pid_s3, lambda: s3_healthy(s3_port), _GATEWAY_TIMEOUT,
                                f"S3 gateway on port {s3_port}")}
    ensure_buckets(_settings(cfg, creds, base))
    _ensure_iam(state, cfg, creds, gateway_started)  # one identity per workload, least privilege
    timings[PREFECT] = wait_healthy(state, PREFECT, pid_pf, lambda: prefect_healthy(prefect_port), timeout,
                                    f"Prefect server on port {prefect_port}")
    return timings


def _started_auth(state: Path, value: str | None = None) -> str | None:
    """The hash of the auth string the running Prefect server was started with (``value``: record it)."""
    path = state / "prefect-auth.json"
    if value is not None:
        write_json(path, {"sha": value})
        return value
    return read_json(path).get("sha")


# how often a worker asks for scheduled runs (Prefect's default 10 s): a run created now starts within 2 s; one
# small API query per pool every 2 s
WORKER_POLL_S = 2


def _start_workers(state: Path, cfg: dict[str, Any], creds: dict[str, str], pools: tuple[str, ...],
                   extra: Mapping[str, str] | None) -> tuple[dict[str, str], dict[str, float]]:
    """Create the pools and start (or keep) one worker each; (the workers' environment, seconds waited)."""
    api = _api(cfg, creds)
    env = {**base_env(), **_workers_env(cfg, creds), "PREFECT_HOME": str(state / "prefect"),
           "SCENE_STATE_DIR": str(state),
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),  # flow runs heartbeat: see ensure_zombie_automation
           "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_POLL_S)}
    ensure_pools(api, pools, env, state, gpus=cfg.get("gpus", 1))
    env.update(extra or {})
    worker_sha = _sha({"workdir": cfg["workdir"], "env": dict(extra or {}), "cfg": _workers_env(cfg, creds),
                       "heartbeat": env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"], "poll": WORKER_POLL_S})
    started: dict[str, tuple[int, float, str]] = {}
    for pool in pools:
        service = _worker(pool)
        if running(state, service) and cfg["workers"].get(pool, {}).get("config") != worker_sha:
            stop(state, service)
        if running(state, service):
            continue
        name = f"scene-{pool}"
        argv = [find_bin("prefect"), "worker", "start", "--pool", pool, "--type", pool_type(pool), "--name", name,
                "--install-policy", "never"]
        started[pool] = (spawn(state, service, argv, env, cwd=Path(cfg["workdir"])), time.time(), name)
        cfg["workers"][pool] = {"name": name, "config": worker_sha}
    write_json(state / "stack.json", cfg)
    timings = {_worker(pool): wait_healthy(state, _worker(pool), pid,
                                           lambda p=pool, n=name, s=since: worker_healthy(api, p, n, s),
                                           _WORKER_TIMEOUT, f"Prefect worker for pool {pool!r}")
               for pool, (pid, since, name) in started.items()}
    return env, timings


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
    gpus: int | None = None,
) -> StackInfo:
    """Start the stack (or reuse the running parts) and wait until every service is healthy.

    ``pools``: process work pools to create, one worker each. ``workdir``: the workers' working directory
    (default: the current directory). ``webhook_url``/``webhook_token``: enable bucket notifications to
    that URL (the gateway is restarted if this changes). ``extra``: additional environment variables for
    the workers. ``settings``: bucket names and data prefix (default ``Settings()``). ``timeout``: seconds
    to wait for the Prefect server. ``events_port``: also run the event bridge (``scene events serve``) there,
    wire the gateway's webhook to it (token generated once, kept with the credentials) and subscribe the data
    prefix; ``quiet_seconds``: its quiet period. ``gpus``: the ``gpu`` pool's concurrency limit, one run per GPU
    (default: ``SCENE_GPUS``, else 1). Raises :class:`StackError` with the failing service's log tail.
    """
    state = state_path(state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = settings or Settings()
    pools = tuple(dict.fromkeys(pools))
    with locked(state):
        old = read_json(state / "stack.json")
        creds = _identities(state, _prefect_auth(state, _credentials(state, create=True)))
        if events_port is not None:
            creds = _events_token(state, creds)
            webhook_url, webhook_token = f"http://{HOST}:{events_port}/notify", creds["events_token"]
        webhook = {"url": webhook_url, "token": _sha(webhook_token) if webhook_token else None} \
            if webhook_url else None
        workdir_path = Path(workdir).resolve() if workdir is not None else Path.cwd()
        cfg = _plan(state, old, base, {S3: s3_port, PREFECT: prefect_port}, pools, workdir_path, webhook,
                    events_port, quiet_seconds)
        cfg["gpus"] = gpu_count(gpus)
        cfg["prefect_auth"] = _sha(creds["prefect_auth_string"])  # which auth string the server must require
        write_json(state / "stack.json", cfg)
        timings = _start_servers(state, cfg, creds, webhook_token, base, timeout)
        ensure_zombie_automation(_api(cfg, creds))  # runs whose worker died end Crashed
        _crash_orphans(_api(cfg, creds), cfg)  # runs left Running by a stop: their slot frees
        env, waited = _start_workers(state, cfg, creds, pools, extra)
        timings.update(waited)
        if events_port is not None:
            bridge_env = {k: v for k, v in env.items() if not k.startswith("SCENE_LINK_")}
            bridge_env.update(_role_env(creds, "scene-bridge"))  # lists the data, reads the registry, nothing more
            timings[EVENTS] = start_events(state, cfg, creds, bridge_env, f"http://{HOST}:{prefect_port}/api",
                                           workdir_path)
            from scene.data.storage import s3_client
            from scene.metadata import IMAGE_SUFFIXES

            configure_bucket_notification(s3_client(_settings(cfg, creds, base)), base.data_bucket, base.data_prefix,
                                          (*IMAGE_SUFFIXES, "_READY"))
        cfg["last_up_wait_s"] = {k: round(v, 2) for k, v in timings.items()}  # seconds each was waited for
        write_json(state / "stack.json", cfg)
        return _info(state, cfg)


def _owned_runs(api: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The live flow runs the stack's process workers run (read before they stop; none when the API fails)."""
    try:
        return orphans.owned_runs(api, list(cfg.get("pools", [])))
    except Exception as err:
        log.warning("could not list the runs of the stack's workers before stopping them: %s", err)
        return []


def _crash_orphans(api: str, cfg: dict[str, Any]) -> None:
    """Crash the runs of the stack's pools left Running or Pending whose process is gone (logged, never raises)."""
    try:
        crashed = orphans.crash_orphans(api, list(cfg.get("pools", [])))
    except Exception as err:
        log.warning("could not look for runs left running by an earlier stop: %s", err)
        return
    if crashed:
        log.warning("marked %d runs Crashed whose process is gone: %s", len(crashed), ", ".join(crashed))


def down(state_dir: str | os.PathLike[str] = ".state") -> list[str]:
    """Stop every service of the stack (the event bridge and workers at once, then Prefect, then S3); return the
    ones that ran."""
    state = state_path(state_dir)
    if not state.is_dir():
        return []
    with locked(state):
        cfg = read_json(state / "stack.json")
        pid_dir = state / "pids"
        known = sorted(p.stem for p in pid_dir.glob("*.pid")) if pid_dir.is_dir() else []
        workers = [s for s in known if s.startswith("worker-")]
        workers += [_worker(p) for p in cfg.get("pools", []) if _worker(p) not in workers]
        first = [EVENTS, *workers]  # each may take its whole SIGTERM grace: in parallel, not one after another
        api = f"http://{HOST}:{cfg.get('prefect_port')}/api"
        with contextlib.suppress(StackError):
            api = _api(cfg, _credentials(state)) if cfg else api
        owned = _owned_runs(api, cfg) if running(state, PREFECT) else []
        with ThreadPoolExecutor(max_workers=len(first)) as pool:
            ran = list(pool.map(lambda s: stop(state, s, timeout=10), first))
        stopped = [s for s, r in zip(first, ran, strict=True) if r]
        if owned:  # before Prefect stops: their runs end Crashed with the reason, not Running forever
            with contextlib.suppress(Exception):
                orphans.end_owned_runs(api, owned)
        stopped += [s for s in (PREFECT, S3) if stop(state, s)]
        return stopped


def status(state_dir: str | os.PathLike[str] = ".state") -> dict[str, Any]:
    """Each service's state: ``{"services": {name: {running, pid, url, healthy, log}}, ...}``."""
    state = state_path(state_dir)
    cfg = read_json(state / "stack.json")
    result: dict[str, Any] = {"state_dir": str(state), "exists": bool(cfg), "services": {}}
    if not cfg:
        return result
    api = f"http://{HOST}:{cfg['prefect_port']}/api"
    with contextlib.suppress(StackError):
        creds = _credentials(state)
        result["access_key"] = _mask(creds["access_key"])
        result["prefect_auth"] = "required" if creds.get("prefect_auth_string") else "none"
        api = _api(cfg, creds)
    services: dict[str, Any] = result["services"]
    pid = running(state, S3)
    services[S3] = {"running": pid is not None, "pid": pid, "url": f"http://{HOST}:{cfg['s3_port']}",
                    "healthy": pid is not None and s3_healthy(cfg["s3_port"]),
                    "log": str(log_file(state, S3))}
    pid = running(state, PREFECT)
    prefect_ok = pid is not None and prefect_healthy(cfg["prefect_port"])
    services[PREFECT] = {"running": pid is not None, "pid": pid, "url": api, "healthy": prefect_ok,
                         "log": str(log_file(state, PREFECT))}
    for pool in cfg.get("pools", []):
        service = _worker(pool)
        pid = running(state, service)
        name = cfg.get("workers", {}).get(pool, {}).get("name", f"scene-{pool}")
        services[service] = {
            "running": pid is not None, "pid": pid, "url": f"{api}/work_pools/{pool}",
            "healthy": pid is not None and prefect_ok and worker_healthy(api, pool, name),
            "log": str(log_file(state, service)),
        }
    if cfg.get("events_port"):
        pid = running(state, EVENTS)
        services[EVENTS] = {"running": pid is not None, "pid": pid, "url": f"http://{HOST}:{cfg['events_port']}",
                            "healthy": pid is not None and events_healthy(cfg["events_port"]),
                            "log": str(log_file(state, EVENTS))}
    result["healthy"] = all(s["healthy"] for s in services.values())
    result["buckets"] = [cfg["data_bucket"], cfg["artifact_bucket"]]
    return result


def env_lines(state_dir: str | os.PathLike[str] = ".state") -> list[str]:
    """Shell ``export`` lines pointing Prefect, boto3 and :class:`Settings` at the stack.

    The only place the S3 secret is printed: meant for ``eval "$(scene stack env)"``.
    """
    state = state_path(state_dir)
    cfg = _config(state)
    creds = _credentials(state)
    env = _client_env(cfg, creds)  # incl. PREFECT_API_AUTH_STRING: every Prefect client sends it
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
    state = state_path(state_dir)
    return _settings(_config(state), _credentials(state), (base or Settings()).replace(state_dir=str(state)))


def _info(state: Path, cfg: dict[str, Any]) -> StackInfo:
    pids = {s: pid for s in (S3, PREFECT, *(_worker(p) for p in cfg["pools"])) if (pid := running(state, s))}
    return StackInfo(
        state_dir=state,
        s3_endpoint=f"http://{HOST}:{cfg['s3_port']}",
        prefect_api_url=f"http://{HOST}:{cfg['prefect_port']}/api",
        ports={S3: cfg["s3_port"], PREFECT: cfg["prefect_port"]},
        pids=pids,
    )


def info(state_dir: str | os.PathLike[str] = ".state") -> StackInfo:
    """The :class:`StackInfo` of an already running stack (raises if the folder holds none)."""
    state = state_path(state_dir)
    return _info(state, _config(state))


