"""Operational ``scene`` commands: the local stack, the weights mirror, dataset uploads."""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

from scene.cli.common import CliError, settings_from_env
from scene.metadata import IMAGE_SUFFIXES

DEMO_DATASET = "demo"  # the name of the generated demo dataset (make run without DATA)
_NAME_OK = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def dataset_name(src: str | Path | None = None, name: str | None = None) -> str:
    """The dataset name an upload goes under: ``name`` if given (checked), else ``src``'s folder name, sanitised.

    Sanitising drops accents, lower-cases, turns every run of characters outside ``a-z 0-9 . _ -`` into ``-`` and trims
    separators at both ends, so ``~/Photos/My Scenes!`` becomes ``my-scenes``. Without either, the demo name.
    """
    if name is not None and name != "":
        if not _NAME_OK.fullmatch(name):
            raise ValueError(f"--name {name!r}: a dataset name is 1-63 characters of a-z, 0-9, '.', '_' or '-', "
                             "starting with a letter or digit (e.g. --name intel-2024)")
        return name
    if src is None or str(src) == "":
        return DEMO_DATASET
    folder = Path(src).expanduser().resolve().name
    ascii_name = unicodedata.normalize("NFKD", folder).encode("ascii", "ignore").decode()
    derived = re.sub(r"[^a-z0-9._-]+", "-", ascii_name.lower()).strip("-._")[:63].rstrip("-._")
    if not derived:
        raise ValueError(f"--src {src}: cannot derive a dataset name from the folder name {folder!r}; "
                         "pass --name NAME (make run ... NAME=NAME)")
    return derived


def cmd_stack(a: argparse.Namespace) -> None:
    from scene.ops import stack

    if a.action == "up":
        info = stack.up(a.state, s3_port=a.s3_port, prefect_port=a.prefect_port, pools=tuple(a.pool or ["default"]),
                        workdir=a.workdir or Path.cwd(), events_port=None if a.no_events else a.events_port,
                        quiet_seconds=a.quiet_seconds, gpus=a.gpus)
        print(f"stack up: Prefect UI {info.prefect_api_url.removesuffix('/api')} (asks for the auth string: "
              f"PREFECT_API_AUTH_STRING from `scene stack env`), S3 {info.s3_endpoint}, state in {info.state_dir}",
              file=sys.stderr)
    elif a.action == "down":
        stopped = stack.down(a.state)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
    elif a.action == "status":
        st = stack.status(a.state)
        print(json.dumps(st, indent=2, default=str))
        if not all(s.get("healthy") for s in st.get("services", {}).values()):
            sys.exit(1)
    else:
        print("\n".join(stack.env_lines(a.state)))


def cmd_weights_mirror(a: argparse.Namespace) -> None:
    """Copy Keras' ImageNet weight files (from the Keras cache, or downloaded) into the bucket's mirror prefix."""
    from scene.data import storage
    from scene.model import backbones

    settings = settings_from_env()
    mirror = f"s3://{settings.artifact_bucket}/{settings.weights_mirror_prefix}"
    done = backbones.mirror_weights(a.backbone or sorted(backbones.BACKBONES), a.image_size, mirror,
                                    storage.s3_client(settings))
    for name, where in done.items():
        if not where.startswith("error"):
            print(f"{name}: {where}")
    failed = [f"{n}: {w}" for n, w in done.items() if w.startswith("error")]
    if failed:
        raise CliError("could not mirror:\n  " + "\n  ".join(failed))


def cmd_data_upload(a: argparse.Namespace) -> None:
    """Upload a local class-folder dataset (or the Kaggle archive folder) to the data bucket.

    Objects already there with the same sha256 are skipped, so re-uploading unchanged data raises no
    storage events; ``--ready`` then puts a ``_READY`` marker (one retraining, without the quiet period).
    """
    from tqdm import tqdm

    from scene.data import storage

    settings = settings_from_env()
    client = storage.s3_client(settings)
    src = Path(a.src)
    if not src.is_dir():
        raise CliError(f"--src {src}: not a folder")
    dest = (a.dest or f"s3://{settings.data_bucket}/{settings.data_prefix}{dataset_name(src, a.name)}/")
    dest = dest.rstrip("/") + "/"
    existing = {}
    for uri, _ in storage.list_files(dest, client):
        loc = storage.parse(uri)
        existing[uri] = client.head_object(Bucket=loc.bucket, Key=loc.key).get("Metadata", {}).get("sha256")
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    sent = 0
    for p in tqdm(files, desc=f"upload to {dest}", unit="img", file=sys.stderr):
        uri = dest + p.relative_to(src).as_posix()
        if existing.get(uri) and existing[uri] == storage.sha256_file(p):
            continue
        storage.upload_file(p, uri, client)
        sent += 1
    before = _bridge_emitted(a.wait_bridge) if a.wait_bridge and sent else None
    if sent and a.ready:
        storage.write_bytes(dest + "_READY", b"", client)
    if before is not None:
        _wait_bridge(a.wait_bridge, before)
    print(f"{dest} ({sent} uploaded, {len(files) - sent} unchanged)")


def _bridge_emitted(url: str) -> int:
    """How many events the bridge at ``url`` has emitted (its /health counter, which needs the bridge's token)."""
    import os

    from scene.ops import prefect_events as events

    token = os.environ.get("SCENE_EVENTS_TOKEN")
    if not token:
        raise CliError("--wait-bridge needs the bridge's token in SCENE_EVENTS_TOKEN "
                       '(eval "$(scene stack env)" sets it for the local stack)')
    return int(events.bridge_stats(url, token)["emitted"])


def _wait_bridge(url: str, before: int, timeout: float = 120.0) -> None:
    """Wait until the bridge has announced the upload (the gateway delivers notifications a few seconds late)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _bridge_emitted(url) > before:
            return
        time.sleep(1)
    print(f"warning: the event bridge at {url} announced nothing within {timeout:.0f} s", file=sys.stderr)


def cmd_runs_show(a: argparse.Namespace) -> None:
    """Print a training run's comparison table and where its artifacts are."""
    from scene.data import storage

    settings = settings_from_env()
    client = storage.s3_client(settings)
    prefix = f"s3://{settings.artifact_bucket}/runs/{a.run_id}/"
    uri = prefix + "comparison.md"
    if not storage.exists(uri, client):
        raise CliError(f"{uri}: no comparison for run {a.run_id!r} (did the run fail? see the Prefect UI)")
    print(comparison_text(storage.read_bytes(prefix + "comparison.csv", client),
                          storage.read_bytes(uri, client).decode()))
    files = list(storage.list_files(prefix, client))
    print(f"\nartifacts: {prefix} ({len(files)} objects, {sum(n for _, n in files) / 1e6:.1f} MB), e.g.")
    for key, _ in files:
        if key.endswith(("report.html", "comparison.csv")):
            print(f"  {key}")


def cmd_runs_watch(a: argparse.Namespace) -> None:
    """Follow a run in the terminal until it ends; exit with its outcome (0 completed, 1 otherwise)."""
    from scene.ops import watch

    try:
        code = watch.watch(a.run_id, interval=a.interval, timeout=a.timeout)
    except watch.WatchError as err:
        raise CliError(str(err)) from err
    if code:
        sys.exit(code)


def comparison_text(csv_bytes: bytes, md: str) -> str:
    """The comparison as an aligned table (scene.evaluation.tables), then comparison.md's verdict and warnings."""
    import io

    import pandas as pd

    from scene.evaluation import tables

    rows = pd.read_csv(io.BytesIO(csv_bytes), keep_default_na=False, na_values=[""]).to_dict("records")
    notes = [ln for ln in md.splitlines() if ln.strip() and not ln.startswith(("|", "# "))]
    return tables.text(tables.display_rows(rows)) + "\n" + "\n".join(notes)


def register(sub: Any) -> None:
    """Add the operational commands to the ``scene`` parser."""
    s = sub.add_parser("stack", help="the local stack: Prefect server, S3 gateway, workers")
    s.add_argument("action", choices=["up", "down", "status", "env"])
    s.add_argument("--state", default=".state", help="state folder (PIDs, logs, credentials, data)")
    s.add_argument("--s3-port", type=int, default=9000)
    s.add_argument("--prefect-port", type=int, default=4200)
    s.add_argument("--pool", action="append", help="work pools to create with a worker (default: default); "
                   "'docker' makes a Docker pool running the scene image (needs Docker and pip install -e '.[docker]')")
    s.add_argument("--workdir", help="where workers run flows (default: the current folder)")
    s.add_argument("--gpus", type=int, help="GPUs the 'gpu' pool serves: its concurrency limit, one run per GPU "
                   "(default: SCENE_GPUS, else 1)")
    s.add_argument("--events-port", type=int, default=8787, help="port of the storage-event bridge")
    s.add_argument("--quiet-seconds", type=float, default=30.0,
                   help="a burst of uploads becomes one retraining after this long without new objects")
    s.add_argument("--no-events", action="store_true", help="do not run the event bridge")
    s.set_defaults(func=cmd_stack)

    r = sub.add_parser("runs", help="training runs").add_subparsers(dest="runs_command", required=True)
    show = r.add_parser("show", help="print a run's comparison table and artifact location")
    show.add_argument("run_id", help="the train-all flow run id")
    show.set_defaults(func=cmd_runs_show)
    watch = r.add_parser("watch", help="follow a run live: one line per backbone, then the comparison table; "
                                       "exits 0 when the run completed, 1 otherwise")
    watch.add_argument("run_id", help="the flow run id (train-all prints it; so does make run)")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between polls of the Prefect API")
    watch.add_argument("--timeout", type=float, help="give up (exit 2) after this many seconds; the run goes on")
    watch.set_defaults(func=cmd_runs_watch)

    w = sub.add_parser("weights", help="ImageNet weights").add_subparsers(dest="weights_command", required=True)
    m = w.add_parser("mirror", help="copy Keras' weight files into the artifact bucket for offline workers")
    m.add_argument("--backbone", action="append")
    m.add_argument("--image-size", type=int, default=150)
    m.set_defaults(func=cmd_weights_mirror)


def cmd_data_name(a: argparse.Namespace) -> None:
    """Print the dataset name ``data upload`` would use (``make run`` asks this)."""
    print(dataset_name(a.src, a.name))


def register_data(data_sub: Any) -> None:
    u = data_sub.add_parser("upload", help="upload a local dataset to the data bucket")
    u.add_argument("--src", required=True)
    u.add_argument("--name", help="dataset name: s3://$SCENE_DATA_BUCKET/$SCENE_DATA_PREFIX<name>/ "
                                  "(default: the --src folder's name, sanitised)")
    u.add_argument("--dest", help="explicit s3:// destination instead of --name")
    u.add_argument("--ready", action="store_true", help="put a _READY marker after uploading anything new")
    u.add_argument("--wait-bridge", metavar="URL", help="wait until the event bridge at URL announced the upload")
    u.set_defaults(func=cmd_data_upload)

    n = data_sub.add_parser("name", help="print the dataset name an upload of --src (or --name) goes under")
    n.add_argument("--src", help="the local dataset folder (default: the generated demo)")
    n.add_argument("--name", help="an explicit name to check instead")
    n.set_defaults(func=cmd_data_name)
