"""Registered model versions: content-addressed folders under ``<prefix><backbone>/<version>/`` listed in
``registry.json``; registering writes every object, then ``checksums.json``, then the registry record, last."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import io
import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from scene.data import storage
from scene.data.retries import call as _retry
from scene.registry.rule import PREDICTION_COLUMNS
from scene.registry.store import (
    CHAMPIONS,
    PREFIX,
    REGISTRY,
    ConflictError,
    RegistryError,
    _code,
    _endpoint,
    _guard,
    _now,
    _prefix,
    _put,
    _read,
)

CAS_ATTEMPTS = 8  # registry.json read-modify-write retries before giving up
CHECKSUMS = "checksums.json"  # sha256 and size of every other object of a version


@dataclass(frozen=True)
class ModelVersion:
    """One registered model: where it lives, what data it was trained on and how it scored on its test split."""

    backbone: str
    version: str  # <backbone>-<12 hex of sha256(model.keras)>
    uri: str  # s3://bucket/models/<backbone>/<version>/
    created: str  # UTC ISO time of registration
    data_fingerprint: str
    test_f1_weighted: float | None
    test_accuracy: float | None
    collapsed: bool  # a collapsed model is never promoted automatically
    random_init: bool  # nor is a random-init one ...
    status: str  # "ok" or "collapsed"
    dataset: str = ""  # the data root URI it was trained on, with a trailing slash ("" for old records)
    synthetic_data: bool = False  # ... nor one trained on generated data
    run: str = ""  # the S3 folder of the run that trained and registered it (runs/<flow run id>/<backbone>/)
    test: str = ""  # the separate test root it was tested on ("": the test split was drawn from the data root)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelVersion:
        """From a registry entry; fields added later (``dataset``, ``synthetic_data``) default for old entries."""
        fs = dataclasses.fields(cls)
        missing = [f.name for f in fs if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise RegistryError(f"model version record {d.get('version', d)!r} lacks fields {missing}")
        return cls(**{f.name: d[f.name] for f in fs if f.name in d})

    @property
    def flags(self) -> list[str]:
        """Why this version may not be promoted without ``--force`` (empty when it may)."""
        return [name for name, on in (("collapsed", self.collapsed), ("random-init", self.random_init),
                                      ("trained on synthetic data", self.synthetic_data)) if on]



# --- datasets ----------------------------------------------------------------------------------------------------


def dataset_uri(source: str | Path) -> str:
    """A data root in canonical form: ``s3://bucket/prefix/`` or an absolute local folder, with a trailing slash."""
    text = str(source).strip()
    if not text:
        raise RegistryError("dataset: empty data root; pass the URI the model was trained on, "
                            "e.g. s3://scene-data/datasets/demo/")
    if storage.parse(text).is_s3:
        return text.rstrip("/") + "/"
    return Path(text).expanduser().resolve().as_posix().rstrip("/") + "/"


def champion_key(dataset: str, prefix: str = PREFIX) -> str:
    """The key of a dataset's champion pointer: ``<prefix>champions/<readable URI>-<10 hex of its sha256>.json``."""
    uri = dataset_uri(dataset)
    readable = re.sub(r"[^a-z0-9]+", "-", uri.split("://", 1)[-1].lower()).strip("-")[-60:].strip("-") or "data"
    return f"{_prefix(prefix)}{CHAMPIONS}{readable}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}.json"


# --- registering ---------------------------------------------------------------------------------------------------


def version_id(backbone: str, model_path: str | Path) -> str:
    """The content-addressed version id of a saved model."""
    return f"{backbone}-{storage.sha256_file(model_path)[:12]}"


def _check_predictions(df: pd.DataFrame, what: str) -> None:
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise RegistryError(f"{what}: missing columns {missing}; expected {list(PREDICTION_COLUMNS)} "
                            "(scene.train.experiment.test_predictions writes them)")


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise RegistryError(f"{path}: missing; register a folder written by scene.train.experiment.train_one")
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError as err:
        raise RegistryError(f"{path}: not valid JSON ({err}); re-run the training that wrote it") from err
    return doc if isinstance(doc, dict) else {}


def _version_record(local_dir: Path, backbone: str, version: str, uri: str, dataset: str | None,
                    run: str | None = None, test: str | None = None) -> ModelVersion:
    metrics = _read_json(local_dir / "metrics.json", required=True)
    split = metrics.get("test") or metrics.get("val") or {}
    meta = metrics.get("meta", {})
    source = dataset or meta.get("data_source") or _read_json(local_dir / "config.json", False).get("data_source")
    if not source:
        raise RegistryError(f"{local_dir}: no dataset recorded (metrics.json meta 'data_source' and config.json "
                            "'data_source' are absent); pass dataset=<data root URI> to register()")
    collapsed = bool(split.get("collapsed", False))
    test = test if test is not None else meta.get("test_source")
    return ModelVersion(backbone=backbone, version=version, uri=uri, created=_now(),
                        data_fingerprint=str(meta.get("data_fingerprint", "")),
                        test_f1_weighted=split.get("f1_weighted"), test_accuracy=split.get("accuracy"),
                        collapsed=collapsed, random_init=bool(meta.get("random_init", False)),
                        status="collapsed" if collapsed else "ok", dataset=dataset_uri(source),
                        synthetic_data=bool(meta.get("synthetic_data", False)),
                        run=run.rstrip("/") + "/" if run else "", test=dataset_uri(test) if test else "")


def _copy_if_same(s3: Any, source: str, dest: str, sha256: str) -> bool:
    """Copy ``source`` to ``dest`` inside the store (no bytes through this client) if it records this sha256."""
    from botocore.exceptions import ClientError

    src, dst = storage.parse(source), storage.parse(dest)
    try:
        head = _retry(s3, lambda: s3.head_object(Bucket=src.bucket, Key=src.key))
    except ClientError as err:
        if _code(err) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise storage.explain(err, src, _endpoint(s3)) from err
    except Exception as err:
        raise storage.explain(err, src, _endpoint(s3)) from err
    if head.get("Metadata", {}).get("sha256") != sha256:
        return False  # not the file we hold (or written without a recorded hash): upload ours instead
    try:
        _retry(s3, lambda: s3.copy_object(Bucket=dst.bucket, Key=dst.key, CopySource={"Bucket": src.bucket,
                                          "Key": src.key}, MetadataDirective="COPY"))
    except Exception as err:
        raise storage.explain(err, dst, _endpoint(s3)) from err
    return True


def _upload(s3: Any, local_dir: Path, uri: str, test_predictions: pd.DataFrame, source: str | None) -> int:
    """Write the version's objects: each file of the folder, ``test_predictions.csv`` from the frame, and last a
    ``checksums.json`` covering them all (a version is listed in registry.json only after that).

    A file whose copy under ``source`` (the run's artifacts) records the same sha256 is copied inside the store
    (S3 CopyObject) instead of uploaded. Returns how many files were copied that way.
    """
    listed, copied = [], 0
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        if rel in (CHECKSUMS, "test_predictions.csv"):
            continue
        digest = storage.sha256_file(path)
        if source and _copy_if_same(s3, source.rstrip("/") + "/" + rel, uri + rel, digest):
            copied += 1
        else:
            storage.upload_file(path, uri + rel, s3)
        listed.append({"uri": uri + rel, "sha256": digest, "bytes": path.stat().st_size})
    buf = io.StringIO()
    test_predictions[list(PREDICTION_COLUMNS)].to_csv(buf, index=False)
    data = buf.getvalue().encode()
    storage.write_bytes(uri + "test_predictions.csv", data, s3)
    listed.append({"uri": uri + "test_predictions.csv", "sha256": storage.sha256_bytes(data), "bytes": len(data)})
    storage.write_bytes(uri + CHECKSUMS, json.dumps(listed, indent=2).encode(), s3)
    return copied


def register(s3: Any, bucket: str, local_dir: str | Path, backbone: str, test_predictions: pd.DataFrame, *,
             dataset: str | None = None, prefix: str = PREFIX, source: str | None = None,
             test: str | None = None) -> ModelVersion:
    """Write a trained backbone folder as a new version and list it in ``registry.json``; a no-op if known.

    ``dataset``: the data root it was trained on; default: ``metrics.json``'s ``meta.data_source`` (else
    ``config.json``'s ``data_source``). ``test``: its separate test root (default: ``meta.test_source``; none: the
    test split came from the data root). ``synthetic_data`` and ``random_init`` come from ``metrics.json``'s meta.
    ``source``: the S3 folder the run already uploaded this folder to; its objects are copied server-side and the
    record names it (``run``: the run that trained the version; the first one, when runs trained the same bytes).
    Objects first, then ``checksums.json``, then the registry record: a failure part-way (the store down for longer
    than the client's retry budget) leaves an unlisted folder that the next registration of the model rewrites.
    """
    local_dir, prefix = Path(local_dir), _prefix(prefix)
    model = local_dir / "model.keras"
    if not model.is_file():
        raise RegistryError(f"{model}: missing; pass the folder a training run wrote for backbone {backbone!r}")
    _check_predictions(test_predictions, f"test_predictions of {local_dir}")
    version = version_id(backbone, model)
    known = _find(list_versions(s3, bucket, prefix=prefix), version)
    if known:
        return ModelVersion.from_dict(known)
    uri = f"s3://{bucket}/{prefix}{backbone}/{version}/"
    record = _version_record(local_dir, backbone, version, uri, dataset, source, test)
    _upload(s3, local_dir, uri, test_predictions, source)
    return ModelVersion.from_dict(_add_to_registry(s3, bucket, prefix + REGISTRY, record.to_dict()))


def _add_to_registry(s3: Any, bucket: str, key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` to registry.json by compare-and-swap; the existing entry if the version is already there."""
    for _ in range(CAS_ATTEMPTS):
        with _guard(s3, bucket, key) as conditional:
            doc, etag = _read(s3, bucket, key)
            entries = _entries(doc, f"s3://{bucket}/{key}")
            existing = _find(entries, entry["version"])
            if existing:
                return existing
            if _put(s3, bucket, key, [*entries, entry], etag, conditional=conditional):
                return entry
        time.sleep(random.random() * 0.5)
    raise ConflictError(f"s3://{bucket}/{key}: changed by other writers {CAS_ATTEMPTS} times in a row while "
                        f"adding {entry['version']}; retry the registration")


def _find(entries: list[dict[str, Any]], version: str) -> dict[str, Any] | None:
    return next((e for e in entries if e.get("version") == version), None)


# --- reading -------------------------------------------------------------------------------------------------------


def _entries(doc: Any, where: str) -> list[dict[str, Any]]:
    if doc is None:
        return []
    if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
        raise RegistryError(f"{where}: expected a JSON list of version records; restore it from a backup")
    return doc


def list_versions(s3: Any, bucket: str, backbone: str | None = None, *, prefix: str = PREFIX) -> list[dict[str, Any]]:
    """Every registered version (oldest first), optionally of one backbone."""
    key = _prefix(prefix) + REGISTRY
    entries = _entries(_read(s3, bucket, key)[0], f"s3://{bucket}/{key}")
    return [e for e in entries if backbone is None or e.get("backbone") == backbone]


def get_version(s3: Any, bucket: str, version: str, *, prefix: str = PREFIX) -> dict[str, Any]:
    """The registry entry of one version; the error suggests close ids."""
    entries = list_versions(s3, bucket, prefix=prefix)
    entry = _find(entries, version)
    if entry is None:
        close = difflib.get_close_matches(version, [e["version"] for e in entries], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise RegistryError(f"model version {version!r} is not in s3://{bucket}/{_prefix(prefix)}{REGISTRY}; "
                            f"see `scene models list`.{hint}")
    return entry

