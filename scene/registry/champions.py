"""Champion pointers (one per dataset), promotion decisions, the gate that moves a pointer, and rollback."""

from __future__ import annotations

import dataclasses
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

from scene.data import storage
from scene.registry.rule import ALPHA, MARGIN, Decision, class_mismatch, decide
from scene.registry.smoke import SmokeResult, check_version
from scene.registry.store import (
    CHAMPIONS,
    PREFIX,
    ConflictError,
    RegistryError,
    _guard,
    _now,
    _prefix,
    _put,
    _read,
)
from scene.registry.versions import ModelVersion, champion_key, dataset_uri, get_version

DECISION_FILES = ("decision.json", "decision.md")
GATES = "gates/"  # one counter per dataset under <prefix>gates/: how many gates its test split has served
GATE_CAS_ATTEMPTS = 8


@dataclass(frozen=True)
class Pointer:
    """A dataset's champion pointer as read, with the ETag a later :func:`promote` must still find."""

    champion: dict[str, Any] | None
    etag: str | None
    dataset: str | None = None  # the dataset whose pointer this is (None: not read for a specific dataset)



def _pointers(s3: Any, bucket: str, prefix: str) -> list[tuple[dict[str, Any], str | None]]:
    """Every champion pointer document (with its ETag), in key order."""
    root = f"s3://{bucket}/{_prefix(prefix)}{CHAMPIONS}"
    out = []
    for uri, _ in storage.list_files(root, s3):
        if uri.endswith(".json"):
            doc, etag = _read(s3, bucket, uri.split("/", 3)[3])
            if isinstance(doc, dict) and doc.get("data"):
                out.append((doc, etag))
    return out


def read_champion(s3: Any, bucket: str, *, dataset: str | None = None, prefix: str = PREFIX) -> Pointer:
    """A dataset's champion pointer and its ETag (both None when that dataset has no champion yet).

    Without ``dataset``: the most recently promoted champion of any dataset (an empty Pointer when none).
    """
    if dataset is not None:
        uri = dataset_uri(dataset)
        doc, etag = _read(s3, bucket, champion_key(uri, prefix))
        return Pointer(doc, etag, uri)
    docs = _pointers(s3, bucket, prefix)
    if not docs:
        return Pointer(None, None, None)
    doc, etag = max(docs, key=lambda d: str(d[0].get("promoted_at", "")))
    return Pointer(doc, etag, doc["data"])


def champion(s3: Any, bucket: str, *, dataset: str | None = None, prefix: str = PREFIX) -> dict[str, Any] | None:
    """A dataset's champion document (without ``dataset``: the most recently promoted of any), or None.

    Fields: ``data`` (dataset URI), ``model`` (URI of model.keras), ``version``, ``backbone``, ``uri``,
    ``promoted_at``, ``decision``, ``history``.
    """
    return read_champion(s3, bucket, dataset=dataset, prefix=prefix).champion


def serving_champion(s3: Any, bucket: str, dataset: str | None = None, *, prefix: str = PREFIX) -> dict[str, Any]:
    """The champion that predictions use: ``dataset``'s, or, without one, the champion of the only dataset that has
    one. Never "the newest of any": with several datasets the caller must name one (the error lists them)."""
    if dataset is not None:
        doc = champion(s3, bucket, dataset=dataset, prefix=prefix)
        if doc is None:
            known = sorted(champions(s3, bucket, prefix=prefix))
            raise RegistryError(f"dataset {dataset_uri(dataset)} has no champion yet; train and promote one, or name "
                                f"a dataset that has one: {', '.join(known) or '(none yet)'}")
        return doc
    docs = champions(s3, bucket, prefix=prefix)
    if not docs:
        raise RegistryError("no champion model in the registry yet: train and promote one (train-all or retrain), "
                            "or pass a model file")
    if len(docs) > 1:
        raise RegistryError(f"{len(docs)} datasets have a champion; name the one whose champion should predict "
                            f"(dataset=… / --dataset): {', '.join(sorted(docs))}")
    return next(iter(docs.values()))


def champions(s3: Any, bucket: str, *, prefix: str = PREFIX) -> dict[str, dict[str, Any]]:
    """Every dataset's champion document, keyed by dataset URI."""
    return {doc["data"]: doc for doc, _ in _pointers(s3, bucket, prefix)}


def show(s3: Any, bucket: str, version: str, *, prefix: str = PREFIX) -> dict[str, Any]:
    """A version's registry entry plus its ``metrics.json`` and whether it is its dataset's champion."""
    entry = get_version(s3, bucket, version, prefix=prefix)
    metrics = json.loads(storage.read_bytes(entry["uri"] + "metrics.json", s3))
    current = champion(s3, bucket, dataset=entry["dataset"], prefix=prefix) if entry.get("dataset") else None
    return {**entry, "is_champion": bool(current and current.get("version") == version), "metrics": metrics}


# --- the decision objects ------------------------------------------------------------------------------------------


def write_decision(s3: Any, version: ModelVersion, decision: Decision) -> list[str]:
    """Store ``decision.json`` and ``decision.md`` in the version's folder and list them in its checksums.json."""
    base = version.uri.rstrip("/") + "/"
    payloads = {
        "decision.json": json.dumps({**decision.to_dict(), "decided_at": _now()}, indent=2).encode(),
        "decision.md": f"# Promotion decision: {version.version}\n\n{decision.markdown()}\n".encode(),
    }
    for name, data in payloads.items():
        storage.write_bytes(base + name, data, s3)
    listed: Any = []
    if storage.exists(base + "checksums.json", s3):
        listed = json.loads(storage.read_bytes(base + "checksums.json", s3))
    if not isinstance(listed, list):
        raise RegistryError(f"{base}checksums.json: expected a JSON list of files; re-register {version.version}")
    kept = [e for e in listed if str(e.get("uri", "")).rsplit("/", 1)[-1] not in DECISION_FILES]
    kept += [{"uri": base + name, "sha256": storage.sha256_bytes(data), "bytes": len(data)}
             for name, data in payloads.items()]
    storage.write_bytes(base + "checksums.json", json.dumps(kept, indent=2).encode(), s3)
    return [base + name for name in payloads]


def read_decision(s3: Any, version: ModelVersion | dict[str, Any]) -> Decision | None:
    """The stored decision of a version, or None when it was never gated."""
    uri = _as_version(version).uri.rstrip("/") + "/decision.json"
    return Decision.from_dict(json.loads(storage.read_bytes(uri, s3))) if storage.exists(uri, s3) else None


# --- promoting -----------------------------------------------------------------------------------------------------


def _as_version(version: ModelVersion | dict[str, Any]) -> ModelVersion:
    return version if isinstance(version, ModelVersion) else ModelVersion.from_dict(version)


def _pointer_key(v: ModelVersion, prefix: str) -> str:
    if not v.dataset:
        raise RegistryError(f"model version {v.version} records no dataset (registered before datasets were a "
                            "registry dimension); register its folder again with dataset=<data root URI>")
    return champion_key(v.dataset, prefix)


def _history_entry(doc: dict[str, Any]) -> dict[str, Any]:
    reason = (doc.get("decision") or {}).get("reason", "")
    return {k: doc.get(k) for k in ("backbone", "version", "uri", "promoted_at")} | {"reason": reason}


def _champion_doc(v: ModelVersion, decision: dict[str, Any] | None, previous: dict[str, Any] | None,
                  history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if history is None:
        history = [_history_entry(previous), *previous.get("history", [])] if previous else []
    return {"data": v.dataset, "test": v.test, "backbone": v.backbone, "version": v.version, "uri": v.uri,
            "model": v.uri + "model.keras", "promoted_at": _now(), "decision": decision, "history": history,
            "write_id": uuid.uuid4().hex}


def _swap(s3: Any, bucket: str, key: str, expected_etag: str | None, make: Any) -> bool:
    """Write ``make(current)`` as the pointer ``key`` if its ETag is still ``expected_etag``."""
    with _guard(s3, bucket, key) as conditional:
        current, etag = _read(s3, bucket, key)
        if etag != expected_etag:
            return False
        return _put(s3, bucket, key, make(current), etag, conditional=conditional)


def promote(s3: Any, bucket: str, version: ModelVersion | dict[str, Any], decision: Decision | None, *,
            expected_etag: str | None, prefix: str = PREFIX) -> bool:
    """Make ``version`` the champion of its dataset if that pointer still has ``expected_etag`` (None: absent).

    Returns False, writing nothing, when another promotion got there first; True when written, or when
    ``version`` already is the champion (a retried promotion). Does not judge the model: see :func:`gate`.
    """
    v = _as_version(version)
    key = _pointer_key(v, prefix)
    current, _ = _read(s3, bucket, key)
    if current and current.get("version") == v.version:
        return True
    decided = decision.to_dict() if decision else None
    return _swap(s3, bucket, key, expected_etag, lambda prev: _champion_doc(v, decided, prev))


def _check_observed(v: ModelVersion, observed: Pointer, champion_predictions: pd.DataFrame | None) -> None:
    _pointer_key(v, PREFIX)
    if observed.dataset is None or dataset_uri(observed.dataset) != v.dataset:
        raise ValueError(f"observed is the champion pointer of {observed.dataset or 'no particular dataset'}, but "
                         f"challenger {v.version} was trained on {v.dataset}: a challenger is gated only against "
                         f"the champion of its own dataset; pass read_champion(s3, bucket, dataset={v.dataset!r})")
    current = observed.champion
    if (current is None) != (champion_predictions is None):
        state = "no champion" if current is None else f"champion {current.get('version')}"
        raise ValueError(f"champion_predictions must be None exactly when there is no champion; observed {state}")


def gates_key(dataset: str, prefix: str = PREFIX) -> str:
    """The key of a dataset's gate counter: ``<prefix>gates/<the champion pointer's file name>``."""
    return f"{_prefix(prefix)}{GATES}{champion_key(dataset, prefix).rsplit('/', 1)[1]}"


def gates_served(s3: Any, bucket: str, dataset: str, *, prefix: str = PREFIX) -> int:
    """How many gates this dataset's test split has served so far (0 when none)."""
    doc, _ = _read(s3, bucket, gates_key(dataset, prefix))
    return int(doc.get("gates", 0)) if isinstance(doc, dict) else 0


def reserve_gate(s3: Any, bucket: str, dataset: str, challenger: str, *, prefix: str = PREFIX) -> int:
    """Count one more gate on ``dataset``'s test split (compare-and-swap) and return its number k (1, 2, ...).

    Called before the test runs, so a gate that dies afterwards still counts (the level it could have spent is
    gone either way); concurrent gates get distinct numbers.
    """
    key = gates_key(dataset, prefix)
    for _ in range(GATE_CAS_ATTEMPTS):
        with _guard(s3, bucket, key) as conditional:
            doc, etag = _read(s3, bucket, key)
            if doc is not None and not isinstance(doc, dict):
                raise RegistryError(f"s3://{bucket}/{key}: expected a JSON object with 'gates'; restore or delete it "
                                    "(deleting restarts the level spending at gate 1)")
            k = int((doc or {}).get("gates", 0)) + 1
            new = {"dataset": dataset_uri(dataset), "gates": k, "last": {"challenger": challenger, "at": _now()}}
            if _put(s3, bucket, key, new, etag, conditional=conditional):
                return k
        time.sleep(random.random() * 0.5)
    raise ConflictError(f"s3://{bucket}/{key}: changed by other gates {GATE_CAS_ATTEMPTS} times in a row; re-run "
                        "the gate")


def version_classes(s3: Any, version: dict[str, Any] | ModelVersion) -> list[str] | None:
    """The class list a registered version was trained with (its ``config.json``), or None when it records none."""
    uri = _as_version(version).uri if isinstance(version, ModelVersion) else str(version["uri"])
    config = uri.rstrip("/") + "/config.json"
    if not storage.exists(config, s3):
        return None
    try:
        names = json.loads(storage.read_bytes(config, s3)).get("class_names")
    except (ValueError, AttributeError) as err:
        raise RegistryError(f"{config}: not a JSON object ({err}); the version is damaged, re-register it") from err
    return [str(n) for n in names] if isinstance(names, list) else None


def _smoke(s3: Any, v: ModelVersion, predictions: pd.DataFrame, d: Decision) -> Decision:
    """The decision after the fresh-process load check of the challenger's exported model."""
    result: SmokeResult = check_version(s3, v.uri, predictions)
    if result.ok:
        return dataclasses.replace(d, smoke=result.to_dict())
    return dataclasses.replace(d, promote=False, smoke=result.to_dict(),
                               reason=f"not promoted: {result.reason} (the challenger had won: {d.reason})")


def gate(s3: Any, bucket: str, challenger: ModelVersion | dict[str, Any], challenger_predictions: pd.DataFrame,
         champion_predictions: pd.DataFrame | None, *, observed: Pointer, alpha: float = ALPHA,
         margin: float = MARGIN, class_names: list[str] | None = None, smoke: bool = True,
         prefix: str = PREFIX) -> Decision:
    """Decide on the challenger against its dataset's champion in ``observed``; if it wins, promote it atomically.

    ``observed`` is the :func:`read_champion` result (for the challenger's dataset) the caller scored the
    champion from; the prediction tables are the challenger's recorded ``test_predictions.csv`` and the
    champion's predictions on the same test split. The rule is :func:`scene.registry.rule.decide`; a winner is then
    smoke-loaded in a fresh process (``smoke=False`` skips that, for registry tests with placeholder files).
    The decision is stored as ``decision.json`` / ``decision.md`` in the challenger's folder. If the pointer
    changed since ``observed``, nothing is promoted and the decision says so (re-run the gate).

    ``class_names``: the challenger's classes; the champion's come from its ``config.json``, and a gate whose
    lists differ refuses, naming both. Every gate that runs the test against a champion first counts itself in the
    dataset's gate counter (:func:`reserve_gate`), and tests at the level spent on that gate number
    (:func:`scene.registry.rule.spent_alpha`).
    """
    v = _as_version(challenger)
    _check_observed(v, observed, champion_predictions)
    current = observed.champion
    if current and current.get("version") == v.version:
        return Decision(False, "challenger already is the champion", v.version, v.version, alpha=alpha,
                        margin=margin, dataset=v.dataset)
    champion_classes = version_classes(s3, current) if current else None
    tested = current is not None and not v.flags and not class_mismatch(class_names, champion_classes)
    number = reserve_gate(s3, bucket, v.dataset, v.version, prefix=prefix) if tested else None
    d = decide(challenger_predictions, champion_predictions, challenger_collapsed=v.collapsed,
               random_init=v.random_init, synthetic_data=v.synthetic_data, alpha=alpha, margin=margin,
               challenger=v.version, champion=current.get("version") if current else None, class_names=class_names,
               dataset=v.dataset, champion_classes=champion_classes, gate_number=number)
    if d.promote and smoke:
        d = _smoke(s3, v, challenger_predictions, d)
    if d.promote and not promote(s3, bucket, v, d, expected_etag=observed.etag, prefix=prefix):
        now = champion(s3, bucket, dataset=v.dataset, prefix=prefix)
        d = dataclasses.replace(d, promote=False, reason=(
            f"not promoted: the champion pointer of {v.dataset} changed while gating (now "
            f"{now and now.get('version')}); re-run the gate against the new champion (the challenger had won: "
            f"{d.reason})"))
    write_decision(s3, v, d)
    return d


def promote_version(s3: Any, bucket: str, version_id: str, reason: str = "manual", *, force: bool = False,
                    prefix: str = PREFIX) -> dict[str, Any]:
    """Make a registered version its dataset's champion by hand.

    A collapsed, random-init or synthetic-data version is refused unless ``force`` (``--force``): this is the
    only way such a model becomes champion.
    """
    v = ModelVersion.from_dict(get_version(s3, bucket, version_id, prefix=prefix))
    if v.flags and not force:
        raise RegistryError(f"model version {version_id!r} is {' and '.join(v.flags)}, so it is never promoted "
                            "automatically; refusing to promote it — pass force=True (--force) if you really mean to")
    key = _pointer_key(v, prefix)
    doc, etag = _read(s3, bucket, key)
    previous = doc.get("version") if doc else None
    forced = (" (forced" + (f": {', '.join(v.flags)}" if v.flags else "") + ")") if force else ""
    d = Decision(True, f"manual promotion: {reason}{forced}", v.version, previous, dataset=v.dataset)
    if not promote(s3, bucket, v, d, expected_etag=etag, prefix=prefix):
        raise ConflictError(f"s3://{bucket}/{key} changed while promoting {version_id!r}; check `scene models list` "
                            "and retry")
    write_decision(s3, v, d)
    return champion(s3, bucket, dataset=v.dataset, prefix=prefix) or {}


def _rollback_dataset(s3: Any, bucket: str, dataset: str | None, prefix: str) -> str:
    if dataset is not None:
        return dataset_uri(dataset)
    docs = champions(s3, bucket, prefix=prefix)
    if not docs:
        raise RegistryError(f"s3://{bucket}/{_prefix(prefix)}{CHAMPIONS}: there is no champion, so nothing to "
                            "roll back")
    if len(docs) > 1:
        raise RegistryError(f"champions exist for {len(docs)} datasets ({', '.join(sorted(docs))}); pass "
                            "dataset= (--data URI) to say whose champion to roll back")
    return next(iter(docs))


def rollback(s3: Any, bucket: str, *, dataset: str | None = None, prefix: str = PREFIX) -> dict[str, Any]:
    """Restore a dataset's previous champion from its pointer's history; returns the new champion document.

    Without ``dataset``, the only dataset that has a champion (an error names them when there are several).
    """
    uri = _rollback_dataset(s3, bucket, dataset, prefix)
    key = champion_key(uri, prefix)
    doc, etag = _read(s3, bucket, key)
    where = f"s3://{bucket}/{key}"
    if doc is None:
        raise RegistryError(f"{where}: there is no champion for {uri}, so nothing to roll back")
    history = doc.get("history") or []
    if not history:
        raise RegistryError(f"{where}: champion {doc.get('version')} has no previous champion to roll back to; "
                            "promote a version by hand with `scene models promote VERSION`")
    prev, rest = history[0], history[1:]
    v = ModelVersion.from_dict(get_version(s3, bucket, prev["version"], prefix=prefix))
    decided = Decision(True, f"rollback from {doc.get('version')}", v.version, doc.get("version"),
                       dataset=uri).to_dict()
    if not _swap(s3, bucket, key, etag, lambda _: _champion_doc(v, decided, None, rest)):
        raise ConflictError(f"{where} changed during the rollback; check `scene models list` and retry")
    return champion(s3, bucket, dataset=uri, prefix=prefix) or {}
