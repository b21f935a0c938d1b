"""One typed settings object, read from ``SCENE_*`` / AWS env vars and an optional YAML file.

Nothing else in ``scene`` reads the environment: callers build a :class:`Settings` once
(``Settings.from_env()``) and pass it, or the pieces of it, down.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Settings:
    """Where data, artifacts and caches live, and how to reach the S3-compatible store."""

    s3_endpoint_url: str | None = None  # None = AWS default endpoint; local stack sets http://127.0.0.1:PORT
    aws_access_key_id: str | None = field(default=None, repr=False)  # secret: never logged
    aws_secret_access_key: str | None = field(default=None, repr=False)  # secret: never logged
    aws_region: str = "us-east-1"
    data_bucket: str = "scene-data"  # where labelled images land
    artifact_bucket: str = "scene-artifacts"  # models, metrics, reports, registry, feature cache
    data_prefix: str = "datasets/"  # datasets live under s3://data_bucket/data_prefix<name>/
    weights_mirror_prefix: str = "weights-mirror/"  # Keras weight files mirrored for offline workers
    feature_cache: str = str(Path.home() / ".cache" / "scene" / "features")  # local dir or s3:// URI
    work_dir: str = str(Path.home() / ".cache" / "scene" / "work")  # local scratch: models before upload
    state_dir: str = ".state"  # the local stack's state folder (PIDs, logs, credentials, data)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, yaml_path: str | None = None) -> Settings:
        """Build settings from a YAML file (``SCENE_CONFIG``) overlaid by ``SCENE_*``/``AWS_*`` env vars."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        path = yaml_path or env.get("SCENE_CONFIG")
        names = {f.name for f in dataclasses.fields(cls)}
        if path:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(loaded, dict):
                kind = type(loaded).__name__
                raise ValueError(f"settings file {path}: expected a mapping of setting names, got {kind}")
            unknown = set(loaded) - names
            if unknown:
                raise ValueError(f"settings file {path}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
            values.update(loaded)
        aws = {
            "s3_endpoint_url": "AWS_ENDPOINT_URL",
            "aws_access_key_id": "AWS_ACCESS_KEY_ID",
            "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "aws_region": "AWS_DEFAULT_REGION",
        }
        for name in names:
            for var in (f"SCENE_{name.upper()}", aws.get(name)):
                if var and env.get(var):
                    values[name] = env[var]
                    break
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
