"""Service recipes of the local stack: how to start and health-check each service, all on 127.0.0.1.

``s3``: ``juicefs gateway`` (the MinIO-based S3 gateway, SQLite metadata, file blobs), optionally with
MinIO's bucket-notification webhook; ``prefect``: ``prefect server start``; ``worker-<pool>``: a Prefect
process (or Docker) worker; ``events``: the event bridge ``scene events serve``. Every listening address is
``HOST`` (loopback): nothing is reachable from another machine unless a person changes these recipes. Work pools,
their workers, Secret blocks and the zombie automation are read and written with Prefect's own client
(:mod:`scene.ops.prefect_api`); the health probes are plain HTTP (:mod:`scene.ops.http`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from scene.data.storage import StorageError, explain
from scene.ops import http, prefect_api
from scene.ops.supervisor import (
    _LOG_TAIL_LINES,
    HOST,
    StackError,
    base_env,
    find_bin,
    log_file,
    running,
    spawn,
    stop,
    wait_healthy,
    write_json,
)
from scene.settings import Settings

WEBHOOK_ARN = "arn:minio:sqs::PRIMARY:webhook"
S3 = "s3"
PREFECT = "prefect"
EVENTS = "events"  # the storage-event bridge (scene events serve)


def s3_healthy(port: int) -> bool:
    return http.status_of("GET", f"http://{HOST}:{port}/minio/health/live", timeout=2)[0] == 200


def prefect_healthy(port: int) -> bool:
    status, body = http.status_of("GET", f"http://{HOST}:{port}/api/health", timeout=3)
    return status == 200 and body is True


def _parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _worker_record(api: str, pool: str, name: str) -> dict[str, Any] | None:
    """The worker ``name`` of ``pool`` as the API's JSON; None when absent or the API does not answer."""
    try:
        with prefect_api.client(api, timeout=5) as client:
            workers = client.read_workers_for_work_pool(pool)
    except Exception:  # a health probe: unreachable, busy past the client's retries, or no such pool
        return None
    return next((w.model_dump(mode="json") for w in workers if w.name == name), None)


def worker_healthy(api: str, pool: str, name: str, since: float = 0.0) -> bool:
    record = _worker_record(api, pool, name)
    return (
        record is not None
        and record.get("status") == "ONLINE"
        and _parse_time(record.get("last_heartbeat_time")) >= since - 1.0
    )

# ------------------------------------------------------------------------------------------ recipes


# The gateway is the only client of its metadata, so caching it is safe (a client sees its own writes at once);
# with the blobs on local disk a block cache only copies them. Gateway CPU per 15 KiB GET: 0.65× JuiceFS' defaults
# (3.65 → 2.37 ms, benchmarks/s3_reads.py --gateway-flags).
GATEWAY_CACHE = ("--cache-size", "0", "--open-cache", "60", "--attr-cache", "60", "--entry-cache", "60",
                 "--dir-entry-cache", "60")


def start_gateway(state: Path, port: int, creds: dict[str, str], webhook: dict[str, Any] | None,
                   webhook_token: str | None, cache_flags: tuple[str, ...] = GATEWAY_CACHE) -> int:
    juicefs = find_bin("juicefs")
    vol = state / "s3"
    meta = f"sqlite3://{vol / 'meta.db'}"
    env = {k: v for k, v in base_env().items() if not k.startswith("MINIO_")}
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
            "--backup-meta", "0", "--metrics", f"{HOST}:0", "--log", str(log_file(state, S3)),
            "--cache-dir", str(vol / "cache"), *cache_flags, meta, f"{HOST}:{port}"]
    return spawn(state, S3, argv, env, cwd=state)


def start_prefect(state: Path, port: int, auth_string: str | None = None) -> int:
    """Start ``prefect server start``; with ``auth_string`` every API request but ``GET /api/health`` needs it."""
    env = base_env()
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)  # the stack's own string or none, never the caller's
    env.pop("PREFECT_API_AUTH_STRING", None)
    env["PREFECT_HOME"] = str(state / "prefect")
    env["PREFECT_API_URL"] = f"http://{HOST}:{port}/api"
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
        env["PREFECT_API_AUTH_STRING"] = auth_string  # the server's own client calls (UI settings, runner)
    # concurrency-slot leases on disk (PREFECT_HOME/concurrency_leases): in memory, a server restart forgets the
    # lease of a running retrain while its slot stays taken, and that dataset never retrains again
    env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] = "prefect.server.concurrency.lease_storage.filesystem"
    argv = [find_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    return spawn(state, PREFECT, argv, env, cwd=state)


DOCKER_POOL = "docker"  # `--pools docker`: a Docker work pool (prefect-docker worker) running the scene image
GPU_POOL = "gpu"  # `--pool gpu`: a process pool whose concurrency limit is the number of GPUs (`--gpus N`)
DOCKER_TEMPLATE = Path(__file__).resolve().parents[2] / "deployments" / "docker-cpu.json"
# The S3 credentials reach containers through these Prefect Secret blocks, never as literals in a job template
# (which the API, the UI and `docker inspect` of the template show): the worker resolves the references per run.
SECRET_BLOCKS = {"AWS_ACCESS_KEY_ID": "scene-s3-access-key-id", "AWS_SECRET_ACCESS_KEY": "scene-s3-secret-access-key"}


def secret_reference(block: str) -> str:
    """The job-template reference to a Prefect Secret block, resolved by the worker for each flow run."""
    return "{{ prefect.blocks.secret." + block + " }}"


def pool_type(pool: str) -> str:
    return "docker" if pool == DOCKER_POOL else "process"


def docker_pool_job_template(env: Mapping[str, str]) -> dict[str, Any]:
    """deployments/docker-cpu.json with this stack's settings merged into its defaults (no Docker needed).

    The template's own ``env`` default (heartbeat) and its job ``env`` (buckets, ``SCENE_FEATURE_CACHE`` in the
    artifact bucket) are kept; the stack adds its endpoint, region and data prefix, sets the bucket variables, and
    the credentials as ``{{ prefect.blocks.secret.<name> }}`` references (see :func:`ensure_secret_blocks`).
    """
    template = json.loads(DOCKER_TEMPLATE.read_text())
    props = template["variables"]["properties"]
    keep = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "SCENE_DATA_PREFIX")
    secrets = {var: secret_reference(block) for var, block in SECRET_BLOCKS.items() if env.get(var)}
    props["env"]["default"] = {**props["env"]["default"], **{k: env[k] for k in keep if k in env}, **secrets,
                               "PREFECT_HOME": "/tmp/prefect"}
    for var, key in (("data_bucket", "SCENE_DATA_BUCKET"), ("artifact_bucket", "SCENE_ARTIFACT_BUCKET")):
        if env.get(key):
            props[var]["default"] = env[key]
    props["image"]["default"] = env.get("SCENE_DOCKER_IMAGE", props["image"]["default"])
    return template


def docker_pool_template(state: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The docker pool's base job template (:func:`docker_pool_job_template`), also written to the state folder
    (``docker-pool.json``, mode 0600). Checks first that Docker answers and prefect-docker is installed.
    """
    import importlib.util
    import shutil

    if importlib.util.find_spec("prefect_docker") is None:
        raise StackError("--pools docker needs prefect-docker: pip install -e '.[docker]'")
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                           timeout=30, check=False) if docker else None
    if probe is None or probe.returncode != 0:
        why = "no docker client on PATH" if probe is None else (probe.stderr or probe.stdout).strip()[-300:]
        raise StackError(f"--pools docker: no Docker daemon answers ({why}); start one (sudo deployments/dockerd.sh)")
    template = docker_pool_job_template(env)
    write_json(state / "docker-pool.json", template, mode=0o600)
    return template


def _failed(what: str, api: str, err: Exception) -> StackError:
    """A :class:`StackError` naming what failed at which API, with the server's answer when there was one."""
    response = getattr(err, "response", None)
    answer = f"answered {response.status_code}: {response.text[:300]}" if response is not None else str(err)
    return StackError(f"{what} at the Prefect API {api} failed ({answer})")


def ensure_secret_blocks(api: str, env: Mapping[str, str]) -> list[str]:
    """Save the S3 credentials in ``env`` as Prefect Secret blocks (:data:`SECRET_BLOCKS`) at ``api``; their names.

    Prefect's ``Secret`` block saved with ``overwrite=True`` (an existing block's value is replaced), pointed at
    ``api`` for the call.
    """
    from prefect.blocks.system import Secret

    wanted = {block: env[var] for var, block in SECRET_BLOCKS.items() if env.get(var)}
    if not wanted:
        return []
    with prefect_api.settings_for(api):
        for name, value in wanted.items():
            try:
                Secret(value=value).save(name, overwrite=True)
            except Exception as err:
                raise _failed(f"saving the Secret block {name!r}", api, err) from err
    return list(wanted)


def set_pool_concurrency(api: str, pool: str, limit: int | None) -> None:
    """Set a work pool's concurrency limit (None: unlimited) through the Prefect API."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    try:
        with prefect_api.client(api) as client:
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))
    except Exception as err:
        raise _failed(f"setting the concurrency limit of work pool {pool!r}", api, err) from err


def _default_template(pool: str, state: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The base job template a new pool gets: the docker pool's (:func:`docker_pool_template`), else the process
    worker's default (what ``prefect work-pool create --type process`` uses)."""
    if pool == DOCKER_POOL:
        return docker_pool_template(state, env)
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def ensure_pools(api: str, pools: tuple[str, ...], env: dict[str, str], state: Path, gpus: int = 1) -> None:
    """Create the missing work pools with Prefect's client (a process pool gets the process worker's default job
    template).

    The docker pool is (re)created on every call, so its template carries the stack's current settings, and the
    credentials it references are saved as Secret blocks first. The ``gpu`` pool runs at most ``gpus`` flow runs
    at once (one per GPU; the dispatcher pins each to its device).
    """
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    if gpus < 1:
        raise StackError(f"--gpus {gpus}: the gpu pool needs at least one GPU (pass --gpus N or SCENE_GPUS=N, N >= 1)")
    missing = []
    with prefect_api.client(api) as client:
        for pool in pools:
            try:
                client.read_work_pool(pool)
                if pool == DOCKER_POOL:
                    missing.append(pool)
            except ObjectNotFound:
                missing.append(pool)
            except Exception as err:
                raise _failed(f"reading work pool {pool!r}", api, err) from err
        templates = {pool: _default_template(pool, state, env) for pool in missing}  # checks Docker first
        if DOCKER_POOL in missing:
            ensure_secret_blocks(api, env)
        for pool in missing:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type(pool),
                                                       base_job_template=templates[pool]), overwrite=True)
            except Exception as err:
                raise _failed(f"creating work pool {pool!r}", api, err) from err
    if GPU_POOL in pools:
        set_pool_concurrency(api, GPU_POOL, gpus)


ZOMBIE_AUTOMATION = "scene: crash flow runs that stopped heartbeating"
HEARTBEAT_S = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the workers' flow runs (Prefect's minimum)
ZOMBIE_AFTER_S = 600  # no heartbeat (nor end state) for this long: the run's process is gone, mark it Crashed
# (Prefect's docs use 90 s; on a loaded 2-core machine a healthy run's heartbeats were once 90 s late: false crashes)


def zombie_automation(within_s: float = ZOMBIE_AFTER_S) -> dict[str, Any]:
    """Prefect's "Detect zombie flows" automation: a flow run silent for ``within_s`` seconds becomes Crashed.

    A proactive trigger per flow run: after each ``prefect.flow-run.heartbeat`` it expects another heartbeat or
    an end state within ``within_s``. What marks a run Crashed when its worker (not only its process) died.
    """
    ends = [f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")]
    return {
        "name": ZOMBIE_AUTOMATION, "enabled": True,
        "description": f"set up by `scene stack up`: no heartbeat for {within_s:g} s means the flow run's "
                       "process died with its worker",
        "trigger": {"type": "event", "posture": "Proactive", "match": {"prefect.resource.id": "prefect.flow-run.*"},
                    "match_related": {}, "after": ["prefect.flow-run.heartbeat"],
                    "expect": ["prefect.flow-run.heartbeat", *ends], "for_each": ["prefect.resource.id"],
                    "threshold": 1, "within": within_s},
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": f"no heartbeat for {within_s:g} s: the flow run's process or its worker died"}],
    }


def ensure_zombie_automation(api: str, within_s: float = ZOMBIE_AFTER_S) -> str:
    """Create (or update in place) the one zombie-run automation; its id. Idempotent: duplicates are removed."""
    from prefect.events.schemas.automations import AutomationCore

    body = zombie_automation(within_s)
    body["description"] += f" [config {hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]}]"
    automation = AutomationCore.model_validate(body)
    try:
        with prefect_api.client(api) as client:
            found = client.read_automations_by_name(ZOMBIE_AUTOMATION)
            for extra in found[1:]:
                client.delete_automation(extra.id)
            if found and found[0].description == body["description"] and found[0].enabled:
                return str(found[0].id)  # unchanged: left alone (an update would reset the runs it is timing)
            if found:
                client.update_automation(found[0].id, automation)
                return str(found[0].id)
            return str(client.create_automation(automation))
    except Exception as err:
        raise _failed(f"setting up the automation {ZOMBIE_AUTOMATION!r}", api, err) from err


def s3_env(cfg: dict[str, Any], creds: dict[str, str]) -> dict[str, str]:
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


def ensure_buckets(settings: Settings) -> None:
    from scene.data.storage import s3_client

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




def events_healthy(port: int) -> bool:
    try:
        code, _ = http.status_of("GET", f"http://{HOST}:{port}/health", timeout=2.0)
    except Exception:
        return False
    return code == 200


def start_events(state: Path, cfg: dict[str, Any], creds: dict[str, str], env: dict[str, str], api: str,
                  workdir: Path) -> float:
    """Start (or keep) ``scene events serve`` and wait until it answers its health check."""
    port = cfg["events_port"]
    if running(state, EVENTS) and not events_healthy(port):
        stop(state, EVENTS)
    pid = running(state, EVENTS)
    if pid is None:
        argv = [find_bin("scene"), "events", "serve", "--port", str(port), "--bucket", cfg["data_bucket"],
                "--prefix", cfg["data_prefix"], "--quiet-seconds", str(cfg["quiet_seconds"]),
                "--store", str(state / "events.sqlite")]  # notifications survive a bridge kill (replayed)
        ev_env = {**env, "PREFECT_API_URL": api, "SCENE_EVENTS_TOKEN": creds["events_token"]}
        pid = spawn(state, EVENTS, argv, ev_env, cwd=workdir)
    return wait_healthy(state, EVENTS, pid, lambda: events_healthy(port), 60.0, f"event bridge on port {port}")



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

