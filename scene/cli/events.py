"""``scene events serve`` (the storage-event bridge) and ``scene events reconcile`` (announce missed datasets)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from scene.cli.common import CliError, SceneParser, settings_from_env

TOKEN_ENV = "SCENE_EVENTS_TOKEN"
CONFIRM_ENV = "SCENE_EVENTS_CONFIRM_AFTER"
STORE_ENV = "SCENE_EVENTS_STORE"  # the bridge's SQLite queue (scene stack up passes <state>/events.sqlite)
log = logging.getLogger("scene.events")


def _api() -> str:
    """The Prefect API the events go to: ``PREFECT_API_URL`` from the environment, else Prefect's active profile."""
    from scene.ops import prefect_api

    api, _, _ = prefect_api.connection()
    if not api:
        raise CliError("PREFECT_API_URL is not set: export the Prefect API the events go to, e.g. "
                       "http://127.0.0.1:4200/api, or `prefect config set PREFECT_API_URL=…` (the local stack's is "
                       "used when its state folder is here)")
    return api


def _auth() -> dict[str, str | None]:
    """The Prefect credentials (environment, else the active profile)."""
    from scene.ops import prefect_api

    _, auth_string, api_key = prefect_api.connection()
    return {"api_key": api_key, "auth_string": auth_string}


def _reconcile_once(cfg: Any, api: str, busy: set[str] | None = None) -> dict[str, Any]:
    """One reconcile pass against the configured data bucket (S3 settings from the environment).

    ``busy``: data URIs to leave alone besides those a waiting or running retrain or train-all trains on (the
    bridge's pending ones).
    """
    from scene.data import storage
    from scene.ops import prefect_events, reconcile

    settings = settings_from_env()
    s3 = storage.s3_client(settings)
    auth = _auth()
    active = reconcile.active_trainings(api, **auth) | (busy or set())
    return reconcile.reconcile(s3, cfg, settings.artifact_bucket,
                               lambda ev: prefect_events.emit_prefect_event(api, ev, **auth), active=active,
                               outcomes=reconcile.run_outcomes(api, **auth))


def _reconcile_loop(server: Any, api: str, every: float, delay: float, stop: threading.Event) -> None:
    """Reconcile ``delay`` seconds after start, then every ``every`` seconds until ``stop`` (errors are logged).

    The delay lets the gateway replay the notifications it queued while the bridge was down first: their
    batches are pending or their runs waiting by then, and both are skipped, so nothing is announced twice.
    """
    if stop.wait(delay):
        return
    while True:
        busy = {f"s3://{r}" for r in server.batcher.pending_roots()}
        try:
            log.info("reconcile: %s", json.dumps(_reconcile_once(server.cfg, api, busy)))
        except Exception as err:
            log.warning("reconcile failed (retried in %.0f s): %s: %s", every, type(err).__name__, err)
        if every <= 0 or stop.wait(every):
            return


def _config(a: argparse.Namespace, token: str, api: str) -> Any:
    from scene.ops.notifications import BridgeConfig

    if a.quiet_seconds < 0:
        raise CliError(f"--quiet-seconds {a.quiet_seconds}: must be 0 or more")
    settings = settings_from_env()
    return BridgeConfig(
        token=token, bucket=a.bucket or settings.data_bucket,
        prefix=a.prefix if a.prefix is not None else settings.data_prefix,
        quiet_seconds=a.quiet_seconds, max_wait_seconds=a.max_wait_seconds, key_sample=a.key_sample,
        prefect_api_url=api, prefect_api_key=_auth()["api_key"], prefect_auth_string=_auth()["auth_string"])


def _lister(cfg: Any) -> Any:
    """``fingerprint(bucket, root)`` for the batcher: the content fingerprint of the root's listing now (the
    reconcile and the polling sensor fingerprint the same listing, so one state has one event id)."""
    from scene.data import storage
    from scene.ops import polling, prefect_events

    s3 = storage.s3_client(settings_from_env())

    def fingerprint(bucket: str, root: str) -> str:
        return prefect_events.content_fingerprint(polling.snapshot(s3, cfg, under=root))

    return fingerprint


def cmd_events_serve(a: argparse.Namespace) -> None:
    """Serve ``POST /notify`` until SIGINT/SIGTERM; pending batches are emitted on the way out."""
    from scene.ops import prefect_events
    from scene.ops.bridge import serve

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CliError(f"{TOKEN_ENV} is not set: export the bearer token the S3 webhook sends "
                       "(the same value as the gateway's MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN)")
    api = _api()
    cfg = _config(a, token, api)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = a.store or os.environ.get(STORE_ENV) or None
    if store is None:
        log.warning("no --store (or %s): accepted notifications are held in memory only, and a bridge killed "
                    "with a batch pending loses it until the next reconcile", STORE_ENV)
    auth = _auth()
    server = serve(cfg, host=a.host, port=a.port, store=store, fingerprint=_lister(cfg),
                   confirm=(lambda changes: prefect_events.runs_for_changes(api, changes, **auth))
                   if store and a.confirm_after > 0 else None, confirm_after=max(a.confirm_after, 1.0))
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping, emitting pending batches", signum)
        stop.set()
        server.stop(flush=True)

    signal.signal(signal.SIGTERM, _stop)  # before announcing the address: a client may stop us right away
    signal.signal(signal.SIGINT, _stop)
    print(f"event bridge: POST {server.notify_url} (Bearer token from {TOKEN_ENV}), health {server.url}/health "
          f"(counters only with the token), events to {api}", file=sys.stderr, flush=True)
    if a.reconcile_every >= 0:
        threading.Thread(target=_reconcile_loop, args=(server, api, a.reconcile_every, a.reconcile_delay, stop),
                         daemon=True,
                         name="scene-events-reconcile").start()
    server.wait()


def cmd_events_reconcile(a: argparse.Namespace) -> None:
    """Announce every dataset with images no model was trained on (after `prefect deploy`); print what was done."""
    from scene.ops.notifications import polling_config

    settings = settings_from_env()
    cfg = polling_config(a.bucket or settings.data_bucket, a.prefix if a.prefix is not None else settings.data_prefix)
    done = _reconcile_once(cfg, _api())
    print(json.dumps(done, indent=2))
    if done["failed"]:
        raise CliError(f"reconcile: {len(done['failed'])} datasets could not be announced: {done['failed']}")


def register(sub: Any) -> None:
    """Add ``scene events serve`` and ``scene events reconcile`` to the top-level subcommands."""
    from scene.ops.notifications import KEY_SAMPLE

    events = sub.add_parser("events", help="the storage-event bridge (S3 notifications → Prefect events)")
    esub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND", parser_class=SceneParser)
    s = esub.add_parser(
        "serve",
        help="receive S3/MinIO bucket notifications on POST /notify and emit scene.data.arrived",
        description=f"Token: env {TOKEN_ENV} (required). Prefect API: env PREFECT_API_URL (required; "
                    "PREFECT_API_KEY or PREFECT_API_AUTH_STRING when the server needs auth). "
                    "Bucket and prefix default to SCENE_DATA_BUCKET / SCENE_DATA_PREFIX.",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8787, help="port to listen on (default 8787; 0: any free port)")
    s.add_argument("--quiet-seconds", type=float, default=30.0,
                   help="emit once no new object arrived under a dataset folder for this long (default 30)")
    s.add_argument("--max-wait-seconds", type=float, default=600.0,
                   help="emit at the latest this long after a dataset folder's first new object (default 600)")
    s.add_argument("--key-sample", type=int, default=KEY_SAMPLE,
                   help=f"keys kept (and listed in the event) per pending dataset folder (default {KEY_SAMPLE})")
    s.add_argument("--reconcile-every", type=float, default=3600.0,
                   help="reconcile at start and then every this many seconds (default hourly; 0: at start only; "
                        "-1: never)")
    s.add_argument("--store", default=None,
                   help=f"SQLite file that holds accepted notifications until their event is delivered, replayed "
                        f"at start (default: env {STORE_ENV}; none: in memory only)")
    s.add_argument("--confirm-after", type=float, default=float(os.environ.get(CONFIRM_ENV) or 120.0),
                   help="with --store: re-send a delivered event when no retrain run for its change appeared "
                        f"this many seconds later (default: env {CONFIRM_ENV}, else 120; 0: never check)")
    s.add_argument("--reconcile-delay", type=float, default=60.0,
                   help="seconds after start before the first reconcile (default 60: queued notifications first)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every HTTP request too")
    r = esub.add_parser("reconcile", help="emit scene.data.arrived for datasets with images no model was trained on "
                                          "(run after prefect deploy)")
    for p in (s, r):
        p.add_argument("--bucket", default=None, help="the data bucket (default: settings' data_bucket)")
        p.add_argument("--prefix", default=None, help="the datasets prefix (default: settings' data_prefix)")
    s.set_defaults(func=cmd_events_serve)
    r.set_defaults(func=cmd_events_reconcile)
