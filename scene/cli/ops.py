"""Operational ``scene`` commands: the local stack, the weights mirror, dataset uploads."""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

from scene.cli.common import CliError, Renamed, SceneParser, add_json, emit, settings_from_env, split_list, state_dir
from scene.metadata import DEFAULT_IMAGE_SIZE, IMAGE_SUFFIXES

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
        raise ValueError(f"{src}: cannot derive a dataset name from the folder name {folder!r}; "
                         "pass --name NAME (make run ... NAME=NAME)")
    return derived


def cmd_stack_up(a: argparse.Namespace) -> None:
    """Start (or keep) the local stack: Prefect server, S3 gateway, a worker per pool, the event bridge."""
    from scene.ops import stack

    info = stack.up(state_dir(a), s3_port=a.s3_port, prefect_port=a.prefect_port, pools=tuple(a.pools or ["default"]),
                    workdir=a.workdir or Path.cwd(), events_port=None if a.no_events else a.events_port,
                    quiet_seconds=a.quiet_seconds, gpus=a.gpus)
    print(f"stack up: Prefect UI {info.prefect_api_url.removesuffix('/api')} (asks for the auth string: "
          f"PREFECT_API_AUTH_STRING from `scene stack env`), S3 {info.s3_endpoint}, state in {info.state_dir}",
          file=sys.stderr)


def cmd_stack_down(a: argparse.Namespace) -> None:
    """Stop every service of the local stack (its data stays in the state folder)."""
    from scene.ops import stack

    stopped = stack.down(state_dir(a))
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)


def status_text(st: dict[str, Any]) -> str:
    """``scene stack status`` for people: one line per service."""
    if not st.get("exists"):
        return f"no stack in {st.get('state_dir')} (start one with `scene stack up`)"
    lines = [f"stack in {st['state_dir']}: {'healthy' if st.get('healthy') else 'NOT healthy'}"]
    for name, svc in st.get("services", {}).items():
        state = "healthy" if svc.get("healthy") else ("running, not healthy" if svc.get("running") else "stopped")
        lines.append(f"  {name:<16} {state:<22} {svc.get('url', '')}  (log: {svc.get('log', '')})")
    return "\n".join(lines)


def cmd_stack_status(a: argparse.Namespace) -> int:
    """Each service's health; exit 1 when one is not healthy (or there is no stack)."""
    from scene.ops import stack

    st = stack.status(state_dir(a))
    emit(a, st, status_text(st))
    healthy = st.get("exists") and all(s.get("healthy") for s in st.get("services", {}).values())
    return 0 if healthy else 1


def cmd_stack_env(a: argparse.Namespace) -> None:
    """The ``export`` lines of the stack's endpoints and credentials (for ``eval "$(scene stack env)"``)."""
    from scene.ops import stack

    print("\n".join(stack.env_lines(state_dir(a))))


def cmd_weights_mirror(a: argparse.Namespace) -> None:
    """Copy Keras' ImageNet weight files (from the Keras cache, or downloaded) into the bucket's mirror prefix."""
    from scene.data import storage
    from scene.model import backbones

    settings = settings_from_env()
    mirror = f"s3://{settings.artifact_bucket}/{settings.weights_mirror_prefix}"
    done = backbones.mirror_weights(a.backbones or sorted(backbones.BACKBONES), a.image_size, mirror,
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
        raise CliError(f"{src}: not a folder (SRC: the local dataset folder to upload)")
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
        raise CliError("--wait-bridge needs the bridge's token in SCENE_EVENTS_TOKEN (read from the local stack's "
                       "state folder when it is here; `scene stack env` prints it)")
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
    import io

    import pandas as pd

    from scene.data import storage

    settings = settings_from_env()
    client = storage.s3_client(settings)
    prefix = f"s3://{settings.artifact_bucket}/runs/{a.run_id}/"
    uri = prefix + "comparison.md"
    if not storage.exists(uri, client):
        raise CliError(f"{uri}: no comparison for run {a.run_id!r} (did the run fail? see the Prefect UI)")
    csv_bytes = storage.read_bytes(prefix + "comparison.csv", client)
    md = storage.read_bytes(uri, client).decode()
    files = list(storage.list_files(prefix, client))
    rows = pd.read_csv(io.BytesIO(csv_bytes), keep_default_na=False, na_values=[""])
    text = [comparison_text(csv_bytes, md),
            f"\nartifacts: {prefix} ({len(files)} objects, {sum(n for _, n in files) / 1e6:.1f} MB), e.g."]
    text += [f"  {key}" for key, _ in files if key.endswith(("report.html", "comparison.csv"))]
    emit(a, {"run_id": a.run_id, "artifacts": prefix, "comparison": json.loads(rows.to_json(orient="records")),
             "files": [{"uri": key, "bytes": n} for key, n in files]}, "\n".join(text))


def cmd_runs_watch(a: argparse.Namespace) -> int:
    """Follow a run in the terminal until it ends; exit with its outcome (0 completed, 1 otherwise)."""
    from scene.ops import watch

    try:
        return int(watch.watch(a.run_id, interval=a.interval, timeout=a.timeout) or 0)
    except watch.WatchError as err:
        raise CliError(str(err)) from err


def comparison_text(csv_bytes: bytes, md: str) -> str:
    """The comparison as an aligned table (scene.evaluation.tables), then comparison.md's verdict and warnings."""
    import io

    import pandas as pd

    from scene.evaluation import tables

    rows = pd.read_csv(io.BytesIO(csv_bytes), keep_default_na=False, na_values=[""]).to_dict("records")
    notes = [ln for ln in md.splitlines() if ln.strip() and not ln.startswith(("|", "# "))]
    return tables.text(tables.display_rows(rows)) + "\n" + "\n".join(notes)


def _state_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: when not given here, `scene --state DIR stack …` (or SCENE_STATE_DIR, else .state) holds
    p.add_argument("--state", default=argparse.SUPPRESS, metavar="DIR",
                   help="state folder: PIDs, logs, credentials, data (default: SCENE_STATE_DIR, else .state)")


def register(sub: Any) -> None:
    """Add the operational commands to the ``scene`` parser: ``stack``, ``runs``, ``weights``."""
    stack = sub.add_parser("stack", help="the local stack: Prefect server, S3 gateway, workers")
    ss = stack.add_subparsers(dest="stack_command", required=True, metavar="COMMAND", parser_class=SceneParser)
    up = ss.add_parser("up", help="start (or keep) the stack's services")
    _state_flag(up)
    up.add_argument("--s3-port", type=int, default=9000)
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--pools", type=split_list, metavar="A,B",
                    help="comma-separated work pools, each with a worker (default: "
                    "default); 'docker' makes a Docker pool running the scene image (needs Docker and "
                    "pip install -e '.[docker]')")
    up.add_argument("--pool", action=Renamed, dest="pools", new="--pools", append=True)
    up.add_argument("--workdir", help="where workers run flows (default: the current folder)")
    up.add_argument("--gpus", type=int, help="GPUs the 'gpu' pool serves: its concurrency limit, one run per GPU "
                    "(default: SCENE_GPUS, else 1)")
    up.add_argument("--events-port", type=int, default=8787, help="port of the storage-event bridge")
    up.add_argument("--quiet-seconds", type=float, default=30.0,
                    help="a burst of uploads becomes one retraining after this long without new objects")
    up.add_argument("--no-events", action="store_true", help="do not run the event bridge")
    up.set_defaults(func=cmd_stack_up)
    down = ss.add_parser("down", help="stop the stack's services (data and credentials stay)")
    _state_flag(down)
    down.set_defaults(func=cmd_stack_down)
    st = ss.add_parser("status", help="each service's health; exits 1 when one is not healthy")
    _state_flag(st)
    add_json(st)
    st.set_defaults(func=cmd_stack_status)
    env = ss.add_parser("env", help="export lines for the stack's endpoints and credentials: "
                                    'eval "$(scene stack env)"')
    _state_flag(env)
    env.set_defaults(func=cmd_stack_env)

    r = sub.add_parser("runs", help="training runs").add_subparsers(dest="runs_command", required=True,
                                                                     metavar="COMMAND", parser_class=SceneParser)
    show = r.add_parser("show", help="print a run's comparison table and artifact location")
    show.add_argument("run_id", metavar="RUN_ID", help="the train-all flow run id")
    add_json(show)
    show.set_defaults(func=cmd_runs_show)
    watch = r.add_parser("watch", help="follow a run live: one line per backbone, then the comparison table; "
                                       "exits 0 when the run completed, 1 otherwise")
    watch.add_argument("run_id", metavar="RUN_ID", help="the flow run id (train-all prints it; so does make run)")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between polls of the Prefect API")
    watch.add_argument("--timeout", type=float, help="give up (exit 1) after this many seconds; the run goes on")
    watch.set_defaults(func=cmd_runs_watch)

    w = sub.add_parser("weights", help="ImageNet weights").add_subparsers(dest="weights_command", required=True,
                                                                           metavar="COMMAND", parser_class=SceneParser)
    m = w.add_parser("mirror", help="copy Keras' weight files into the artifact bucket for offline workers")
    m.add_argument("--backbones", type=split_list, metavar="A,B", help="comma-separated (default: every backbone)")
    m.add_argument("--backbone", action=Renamed, dest="backbones", new="--backbones", append=True)
    m.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help=f"default {DEFAULT_IMAGE_SIZE}")
    m.set_defaults(func=cmd_weights_mirror)


def cmd_data_name(a: argparse.Namespace) -> None:
    """Print the dataset name ``data upload`` would use (``make run`` asks this)."""
    print(dataset_name(a.src, a.name))


def register_data(data_sub: Any) -> None:
    """Add ``scene data upload`` and ``scene data name`` to ``scene data``."""
    u = data_sub.add_parser("upload", help="upload a local dataset to the data bucket")
    u.positional("SRC", "--src", help="the local dataset folder (class folders, or the Kaggle archive)")
    u.add_argument("--name", help="dataset name: s3://$SCENE_DATA_BUCKET/$SCENE_DATA_PREFIX<name>/ "
                                  "(default: the SRC folder's name, sanitised)")
    u.add_argument("--dest", metavar="URI", help="explicit s3:// destination instead of --name")
    u.add_argument("--ready", action="store_true", help="put a _READY marker after uploading anything new")
    u.add_argument("--wait-bridge", metavar="URL", help="wait until the event bridge at URL announced the upload")
    u.set_defaults(func=cmd_data_upload)

    n = data_sub.add_parser("name", help="print the dataset name an upload of SRC (or --name) goes under")
    n.positional("SRC", "--src", optional=True, help="the local dataset folder (default: the generated demo)")
    n.add_argument("--name", help="an explicit name to check instead")
    n.set_defaults(func=cmd_data_name)
