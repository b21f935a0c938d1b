"""Reconcile: announce every dataset holding images that no model was trained on, in case an event was lost.

Events are lost when they are emitted while the retrain deployment does not exist, during ``prefect deploy``
(which recreates its trigger), or when the bridge dies with a batch pending. The reconcile lists the image
keys of each dataset root under the data prefix and compares them with the ``manifest.csv`` of the newest
registered model version trained on that root (promoted or not, so a challenger that lost the gate is not
retrained again and again). A root with keys outside that manifest, or with no version at all, gets a
``scene.data.arrived`` event (reason ``reconcile``) unless a retrain or train-all run for it is already waiting or
running (that run trains on it).

It runs at bridge start and every ``every`` seconds after (daily by default) in ``scene events serve``, and
as ``scene events reconcile`` after ``prefect deploy`` (``make deploy``). Limitation: an image replaced in
place under the same key is not seen (the listing compares keys, not content).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

from scene.ops.notifications import BridgeConfig
from scene.ops.polling import snapshot
from scene.ops.prefect_events import EmitError, dataset_event, prefect_request

log = logging.getLogger("scene.events")
ACTIVE = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED"]
DAY = 86400.0


def trained_keys(s3: Any, artifact_bucket: str) -> dict[str, set[str] | None]:
    """``{dataset URI: keys in the manifest of its newest registered version}`` (None: that manifest is gone)."""
    import pandas as pd

    from scene import registry
    from scene.data import storage

    newest: dict[str, str] = {}
    for entry in registry.list_versions(s3, artifact_bucket):  # oldest first: the last one wins
        if entry.get("dataset"):
            newest[entry["dataset"]] = entry["uri"]
    out: dict[str, set[str] | None] = {}
    for dataset, uri in newest.items():
        manifest = uri.rstrip("/") + "/manifest.csv"
        if not storage.exists(manifest, s3):
            out[dataset] = None
            continue
        keys = pd.read_csv(io.BytesIO(storage.read_bytes(manifest, s3)), usecols=["key"])["key"]
        out[dataset] = {str(k) for k in keys}
    return out


def untrained(s3: Any, cfg: BridgeConfig, artifact_bucket: str) -> dict[str, list[str]]:
    """``{dataset root: [image keys no registered version of it was trained on]}`` (roots with none left out)."""
    listing = snapshot(s3, cfg)
    trained = trained_keys(s3, artifact_bucket)
    roots: dict[str, list[str]] = {}
    for key in sorted(listing):
        root = cfg.root_of(key)
        if root is not None:
            roots.setdefault(root, []).append(key)
    out: dict[str, list[str]] = {}
    for root, keys in roots.items():
        uri = f"s3://{cfg.bucket}/{root}"
        known: set[str] = set()
        seen = False
        for dataset, manifest_keys in trained.items():
            if dataset.startswith(uri):
                seen = True
                known |= manifest_keys or set()
        new = [k for k in keys if f"s3://{cfg.bucket}/{k}" not in known and k not in known]
        if new or not seen:
            out[root] = new or keys
    return out


def active_trainings(api_url: str, flows: tuple[str, ...] = ("retrain", "train-all"), **auth: Any) -> set[str]:
    """The ``data`` of every retrain or train-all flow run that is waiting or running: its run trains on the data
    anyway (``make run`` submits train-all for the data it just uploaded, then reconciles)."""
    body = {"flows": {"name": {"any_": list(flows)}}, "flow_runs": {"state": {"type": {"any_": ACTIVE}}},
            "limit": 200}
    status, runs = prefect_request(api_url, "/flow_runs/filter", body, **auth)
    if status != 200 or not isinstance(runs, list):
        raise EmitError(f"Prefect API {api_url.rstrip('/')}/flow_runs/filter answered {status}: {str(runs)[:300]}")
    return {str((r.get("parameters") or {}).get("data")) for r in runs}


def reconcile(s3: Any, cfg: BridgeConfig, artifact_bucket: str, emit: Callable[[dict], Any],
              active: set[str] | None = None) -> dict[str, Any]:
    """Emit ``scene.data.arrived`` for each root with untrained images and no active training; what was done.

    ``active``: data URIs with a retrain or train-all waiting or running (:func:`active_trainings`); skipped.
    ``emit`` raises when an event is not delivered; the error is collected and the other roots still go.
    """
    done: dict[str, Any] = {"announced": [], "skipped": [], "failed": {}}
    for root, keys in untrained(s3, cfg, artifact_bucket).items():
        uri = f"s3://{cfg.bucket}/{root}"
        if active and uri in active:
            done["skipped"].append(uri)
            continue
        event = dataset_event(cfg, cfg.bucket, root, keys[: cfg.key_sample], "reconcile", count=len(keys))
        try:
            emit(event)
        except Exception as err:
            done["failed"][uri] = f"{type(err).__name__}: {err}"
            log.warning("reconcile: could not announce %s (%d untrained images): %s", uri, len(keys), err)
            continue
        done["announced"].append(uri)
        log.info("reconcile: announced %s: %d images no model was trained on", uri, len(keys))
    return done
