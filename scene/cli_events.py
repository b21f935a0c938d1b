"""``scene events serve``: run the storage-event bridge (bucket notifications → Prefect events)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

TOKEN_ENV = "SCENE_EVENTS_TOKEN"


def cmd_events_serve(a: argparse.Namespace) -> None:
    """Serve ``POST /notify`` until SIGINT/SIGTERM; pending batches are emitted on the way out."""
    from scene.cli import CliError, _settings
    from scene.events import BridgeConfig, serve

    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise CliError(f"{TOKEN_ENV} is not set: export the bearer token the S3 webhook sends "
                       "(the same value as the gateway's MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN)")
    api = os.environ.get("PREFECT_API_URL", "").strip()
    if not api:
        raise CliError("PREFECT_API_URL is not set: export the Prefect API the events go to, "
                       "e.g. http://127.0.0.1:4200/api (`eval \"$(scene stack env)\"`)")
    if a.quiet_seconds < 0:
        raise CliError(f"--quiet-seconds {a.quiet_seconds}: must be 0 or more")
    settings = _settings()
    cfg = BridgeConfig(
        token=token,
        bucket=a.bucket or settings.data_bucket,
        prefix=a.prefix if a.prefix is not None else settings.data_prefix,
        quiet_seconds=a.quiet_seconds,
        max_wait_seconds=a.max_wait_seconds,
        prefect_api_url=api,
        prefect_api_key=os.environ.get("PREFECT_API_KEY") or None,
        prefect_auth_string=os.environ.get("PREFECT_API_AUTH_STRING") or None,
    )
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = serve(cfg, host=a.host, port=a.port)
    print(f"event bridge: POST {server.notify_url} (Bearer token from {TOKEN_ENV}), health {server.url}/health "
          "(counters only with the token), "
          f"events to {api}", file=sys.stderr, flush=True)

    def _stop(signum: int, _frame: Any) -> None:
        logging.getLogger("scene.events").info("signal %d: stopping, emitting pending batches", signum)
        server.stop(flush=True)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait()


def register(sub: Any) -> None:
    """Add ``scene events serve`` to the top-level subcommands."""
    events = sub.add_parser("events", help="the storage-event bridge (S3 notifications → Prefect events)")
    esub = events.add_subparsers(dest="events_command", required=True)
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
    s.add_argument("--bucket", default=None, help="the data bucket (default: settings' data_bucket)")
    s.add_argument("--prefix", default=None, help="the datasets prefix (default: settings' data_prefix)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every HTTP request too")
    s.set_defaults(func=cmd_events_serve)
