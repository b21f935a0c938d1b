"""One typed settings object (pydantic-settings), read from ``SCENE_*`` / ``AWS_*`` env vars and an optional YAML file.

Nothing else in ``scene`` reads these settings from the environment: callers build a :class:`Settings` once
(``Settings.from_env()``) and pass it, or the pieces of it, down. ``Settings(...)`` alone holds the values given
and the defaults (it reads no environment). Precedence in :meth:`Settings.from_env`: an environment variable, then
the YAML file (``SCENE_CONFIG`` or ``yaml_path``), then the default. Each setting's variables are listed in
:data:`Settings` field aliases (the first one found wins, e.g. ``SCENE_AWS_REGION``, then ``AWS_REGION``, then
``AWS_DEFAULT_REGION``); empty values count as unset.

``docs/configuration.md`` is :func:`reference_markdown` (regenerate: ``python -m scene.settings >
docs/configuration.md``); it also lists every other ``SCENE_*`` variable the code reads (:data:`OTHER_VARIABLES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

_HOME_CACHE = Path.home() / ".cache" / "scene"


def _setting(default: str | None, doc: str, *aliases: str, secret: bool = False, name: str) -> Any:
    """A field read from ``SCENE_<NAME>`` and then the given ``aliases`` (``doc``: its meaning, for the docs)."""
    return Field(default, description=doc, repr=not secret,
                 validation_alias=AliasChoices(f"SCENE_{name.upper()}", *aliases, name))


# (env mapping, YAML path) of the :meth:`Settings.from_env` call being built; None: Settings(...) reads no env
_SOURCES: ContextVar[tuple[Mapping[str, str], str | None] | None] = ContextVar("scene_settings_sources", default=None)


class _EnvMapping(EnvSettingsSource):
    """pydantic-settings' env source over a given mapping (``from_env(env=...)``) instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._given = dict(env)
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in self._given.items() if v != ""}


class Settings(BaseSettings):
    """Where data, artifacts and caches live, and how to reach the S3-compatible store."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", populate_by_name=True, case_sensitive=True)

    s3_endpoint_url: str | None = _setting(
        None, "S3 endpoint URL; unset: AWS's own endpoint (the local stack sets http://127.0.0.1:PORT)",
        "AWS_ENDPOINT_URL", name="s3_endpoint_url")
    aws_access_key_id: str | None = _setting(None, "S3 access key id (secret: never logged)", "AWS_ACCESS_KEY_ID",
                                             secret=True, name="aws_access_key_id")
    aws_secret_access_key: str | None = _setting(None, "S3 secret access key (secret: never logged)",
                                                 "AWS_SECRET_ACCESS_KEY", secret=True, name="aws_secret_access_key")
    aws_region: str = _setting("us-east-1", "S3 region", "AWS_REGION", "AWS_DEFAULT_REGION", name="aws_region")
    data_bucket: str = _setting("scene-data", "bucket where labelled images land", name="data_bucket")
    artifact_bucket: str = _setting("scene-artifacts", "bucket of models, metrics, reports, the registry and the "
                                    "shared feature cache", name="artifact_bucket")
    data_prefix: str = _setting("datasets/", "datasets live under s3://<data_bucket>/<data_prefix><name>/",
                                name="data_prefix")
    weights_mirror_prefix: str = _setting("weights-mirror/", "where `scene weights mirror` keeps Keras weight files "
                                          "(in the artifact bucket) for offline workers", name="weights_mirror_prefix")
    feature_cache: str = _setting(str(_HOME_CACHE / "features"), "feature cache: a local folder or an s3:// URI",
                                  name="feature_cache")
    work_dir: str = _setting(str(_HOME_CACHE / "work"), "local scratch folder (models before upload)",
                             name="work_dir")
    state_dir: str = _setting(".state", "the local stack's state folder (PIDs, logs, credentials, data)",
                              name="state_dir")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)``: the values given; inside :meth:`from_env`: those, the env, then the YAML file."""
        given = _SOURCES.get()
        if given is None:
            return (init_settings,)
        env, yaml_path = given
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvMapping(settings_cls, env)]
        if yaml_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, yaml_path: str | None = None) -> Settings:
        """Settings from a YAML file (``yaml_path``, else ``SCENE_CONFIG``) overlaid by the env vars (``env``,
        default ``os.environ``). Raises ValueError naming the file or variable and what to pass instead."""
        import os

        env = dict(os.environ if env is None else env)
        path = yaml_path or env.get("SCENE_CONFIG") or None
        if path:
            _check_yaml(path, set(cls.model_fields))
        token = _SOURCES.set((env, path))
        try:
            return cls()
        except ValidationError as err:
            raise ValueError(_explain(err, env, path)) from None
        finally:
            _SOURCES.reset(token)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated: an unknown name or a wrong type raises ValueError)."""
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as err:
            raise ValueError(_explain(err, {}, None)) from None


def env_names(field: str) -> list[str]:
    """The environment variables a setting is read from, first one wins (``SCENE_<FIELD>`` first)."""
    alias = Settings.model_fields[field].validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else []
    return [str(c) for c in choices if isinstance(c, str) and c.isupper()]


def _check_yaml(path: str, names: set[str]) -> None:
    """A clear error when the settings file is missing, not a mapping, or names an unknown setting."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"settings file {path} (SCENE_CONFIG): not found; pass the path of a YAML mapping of "
                         f"setting names, or unset SCENE_CONFIG")
    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"settings file {path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"settings file {path}: expected a mapping of setting names, got {type(loaded).__name__}")
    unknown = set(map(str, loaded)) - names
    if unknown:
        raise ValueError(f"settings file {path}: unknown keys {sorted(unknown)}; known: {sorted(names)}")


def _explain(err: ValidationError, env: Mapping[str, str], path: str | None) -> str:
    """One line per bad value: the setting, where it came from (variable or file), and what was wrong."""
    lines = []
    for e in err.errors():
        key = str(e["loc"][0]) if e["loc"] else "?"
        field = next((f for f in Settings.model_fields if key == f or key in env_names(f)), key)
        where = next((v for v in env_names(field) if env.get(v)), None) if field in Settings.model_fields else None
        origin = f"env {where}" if where else f"settings file {path}" if path else "given value"
        lines.append(f"setting {field!r} ({origin}): {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


# Every other SCENE_* variable the code reads: name -> (who reads it, what it does). A test fails when the code
# (scene/ flows/ tasks/ deployments/ Makefile prefect.yaml) names a SCENE_* variable that is neither here nor a
# setting's variable. A name ending in "_" is a prefix (SCENE_LINK_*).
OTHER_VARIABLES: dict[str, tuple[str, str]] = {
    "SCENE_CONFIG": ("Settings.from_env", "path of a YAML file of settings (the keys are the setting names above)"),
    "SCENE_EVENTS_TOKEN": ("scene events serve, scene data upload --wait-bridge (scene stack env exports it)",
                           "bearer token of the storage-event bridge (the S3 webhook and /health counters)"),
    "SCENE_EVENTS_CONFIRM_AFTER": ("scene events serve", "with a store: seconds after which a delivered event is "
                                   "re-sent when no retrain run for its change appeared (default 120; 0: never)"),
    "SCENE_EVENTS_STORE": ("scene events serve", "the bridge's SQLite queue file (scene stack up passes "
                           "<state>/events.sqlite)"),
    "SCENE_GPUS": ("scene stack up", "number of GPUs the `gpu` work pool serves (default 1)"),
    "SCENE_DOCKER_IMAGE": ("scene stack up --pools docker", "default image of the docker pool's job template "
                           "(else scene-cpu:latest)"),
    "SCENE_LINK_": ("scene.data.storage.presigned_url", "SCENE_LINK_ACCESS_KEY_ID / SCENE_LINK_SECRET_ACCESS_KEY: "
                    "the read-only identity that signs presigned links (scene stack env sets them)"),
    "SCENE_LINK_ACCESS_KEY_ID": ("scene.data.storage.presigned_url", "see SCENE_LINK_*"),
    "SCENE_LINK_SECRET_ACCESS_KEY": ("scene.data.storage.presigned_url", "see SCENE_LINK_*"),
    "SCENE_TF_INTRA_THREADS": ("scene.model.runtime", "TensorFlow intra-op threads (default: one per core)"),
    "SCENE_TF_INTER_THREADS": ("scene.model.runtime", "TensorFlow inter-op threads (default 1 on <= 4 cores, else 2)"),
    "SCENE_TF_THREADS": ("scene.model.runtime", "`tf-default` leaves TensorFlow's own thread defaults"),
    "SCENE_INFERENCE_RUNTIME": ("scene.model.infer", "inference runtime of frozen forward passes: auto (default: "
                                "OpenVINO when installed, no GPU and float32), tensorflow or openvino"),
    "SCENE_INFERENCE_PRECISION": ("scene.model.infer", "precision of OpenVINO forward passes: f32 (default) or bf16 "
                                  "(~1.9x faster on CPUs with BF16; accuracy measured in docs/inference.md)"),
    "SCENE_EXPORT": ("scene.model.export", "openvino (default): each trained model is also written as OpenVINO IR "
                     "(openvino/model.xml beside model.keras); none: not"),
    "SCENE_S3_READERS": ("scene.model.runtime", "parallel S3 image reads of the input pipeline (default 16)"),
    "SCENE_SLOT_POLL_S": ("flows/retrain_runs.py", "seconds between a waiting retrain's checks for its dataset's "
                          "free training slot"),
    "SCENE_REPO_DIR": ("prefect.yaml, Makefile (make deploy), deployments/", "the checkout process-pool deployments "
                       "run from (their pull step cds into it)"),
    "SCENE_BASE_IMAGE": ("deployments/prefect-*.yaml, deployments/docker-host.sh", "base image of the scene image "
                         "(default python:3.11-slim)"),
    "SCENE_TEST_BASE_IMAGE": ("deployments/docker-host.sh", "base image the Docker tests build on "
                              "(default scene-base:bookworm)"),
    "SCENE_REGISTRY": ("deployments/prefect-gpu.yaml", "registry the GPU image is pushed to"),
}


def documented_variables() -> set[str]:
    """Every variable docs/configuration.md names: the settings' variables and :data:`OTHER_VARIABLES`."""
    names = {v for f in Settings.model_fields for v in env_names(f)}
    return names | set(OTHER_VARIABLES)


def reference_markdown() -> str:
    """docs/configuration.md: every setting (variables, default, meaning) and every other SCENE_* variable."""
    home = str(Path.home())
    out = ["# Configuration", "",
           "<!-- generated by `python -m scene.settings > docs/configuration.md`; tests/test_settings.py checks it "
           "is current -->", "",
           "Settings (`scene.Settings`) are read by `Settings.from_env()`: from the first environment variable set "
           "in each row's list, else from the YAML file named by `SCENE_CONFIG` (keys are the setting names), else "
           "the default. Empty values count as unset; an unknown YAML key or a wrong type is an error naming the "
           "key. `Settings(...)` in Python holds only the values given and the defaults.", "",
           "| setting | environment variables (first set wins) | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else f"`{str(field.default).replace(home, '~')}`"
        names = ", ".join(f"`{v}`" for v in env_names(name))
        out.append(f"| `{name}` | {names} | {default} | {field.description} |")
    out += ["", "## Other variables", "", "| variable | read by | meaning |", "|---|---|---|"]
    for var, (who, meaning) in sorted(OTHER_VARIABLES.items()):
        shown = f"`{var}*`" if var.endswith("_") else f"`{var}`"
        out.append(f"| {shown} | {who} | {meaning} |")
    out += ["", "The Prefect connection comes from Prefect's own settings (`PREFECT_API_URL`, `PREFECT_API_KEY`, "
            "`PREFECT_API_AUTH_STRING`: the environment, else the active profile, e.g. "
            "`prefect config set PREFECT_API_URL=...`); `eval \"$(scene stack env)\"` exports the local stack's.", "",
            "TensorFlow's BFC allocator is on for CPU memory (`TF_CPU_ALLOCATOR_USE_BFC=true`, set before the first "
            "TensorFlow op unless the environment sets it; `false` keeps TensorFlow's default, which page-faults "
            "every large tensor in again: 1.5-1.7x slower on 2 cores, docs/benchmarks.md#memory-allocator).", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown(), end="")
