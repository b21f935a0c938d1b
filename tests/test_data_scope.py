"""The data a flow may read (only inside the data bucket and prefix) and where its parameters may make it write."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scene.data.scope import (
    PREDICT_PREFIX,
    require_data_uri,
    require_data_uris,
    require_predictions_uri,
    require_run_prefix,
    require_state_key,
)
from scene.settings import Settings

S = Settings(data_bucket="scene-data", data_prefix="datasets/")


@pytest.mark.parametrize("uri", ["s3://scene-data/datasets/intel/", "s3://scene-data/datasets/a/seg_train"])
def test_inside_the_data_prefix_is_accepted(uri: str) -> None:
    assert require_data_uri(uri, S) == uri


@pytest.mark.parametrize(("uri", "words"), [
    ("/etc/", "only from the data bucket"),
    ("file:///home/", "only from the data bucket"),
    ("s3://scene-artifacts/registry/", "not the data bucket"),
    ("s3://scene-data/incoming/x/", "outside the data prefix"),
    ("s3://scene-data/datasets-evil/x/", "outside the data prefix"),
    ("s3://scene-data/datasets/../registry/", "'..'"),
    ("s3://scene-data/datasets/a/../../x/", "'..'"),
    ("s3://scene-data/datasets//x/", "empty path segment"),
    ("s3://scene-data/", "outside the data prefix"),
])
def test_anything_else_is_refused_naming_the_allowed_place(uri: str, words: str) -> None:
    with pytest.raises(ValueError, match="s3://scene-data/datasets/") as err:
        require_data_uri(uri, S)
    assert words in str(err.value) and uri in str(err.value)


def test_predict_may_also_read_the_incoming_prefix() -> None:
    prefixes = (S.data_prefix, PREDICT_PREFIX)
    assert require_data_uri("s3://scene-data/incoming/", S, prefixes=prefixes)
    with pytest.raises(ValueError, match="outside the data prefix"):
        require_data_uri("s3://scene-data/models/", S, prefixes=prefixes)


class _Tripwire:
    """Stands in for a module or function a flow would use: any call or attribute fails the test, naming it."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"{self.what}.{name} was used before the data check refused the location")

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"{self.what} ran before the data check refused the location")


@pytest.mark.parametrize(("flow", "data", "words"), [
    ("retrain", "s3://scene-data/incoming/x/", "outside the data prefix"),
    ("retrain", "/etc/", "only from the data bucket"),
    ("predict", "/etc/", "only from the data bucket"),
    ("predict", "s3://scene-artifacts/models/", "not the data bucket"),
])
def test_flows_refuse_out_of_scope_data_before_anything_else(monkeypatch: pytest.MonkeyPatch, flow: str, data: str,
                                                             words: str) -> None:
    """flows/retrain.py and flows/predict.py, called with data outside the data prefix, raise the scope error before
    any S3 call, artifact, model lookup or training (each of those is a tripwire here)."""
    from flows import predict, retrain

    for name in ("SCENE_DATA_BUCKET", "SCENE_DATA_PREFIX", "SCENE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    module = {"retrain": retrain, "predict": predict}[flow]
    for name in ("s3", "artifacts", "data_tasks", "audit_tasks", "registry_tasks", "_one_dataset", "resolve_model",
                 "predict_images", "retrain_runs", "train_and_compare"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _Tripwire(f"{flow}.{name}"))
    fn = {"retrain": retrain.retrain.fn, "predict": predict.predict.fn}[flow]
    with pytest.raises(ValueError, match="s3://scene-data/datasets/") as err:
        fn(data=data)
    assert words in str(err.value) and data in str(err.value)


# ------------------------------------------------------------------- where location parameters may write

A = Settings(data_bucket="scene-data", data_prefix="datasets/", artifact_bucket="scene-artifacts")
PARENT, OWN = "1a2b3c4d-0000-4000-8000-000000000001", "1a2b3c4d-0000-4000-8000-000000000002"


def test_predictions_only_under_predictions() -> None:
    ok = "s3://scene-artifacts/predictions/batch-7/predictions.csv"
    assert require_predictions_uri(ok, A) == ok


@pytest.mark.parametrize(("uri", "words"), [
    ("s3://scene-artifacts/models/champions/scene-data-datasets-x.json", "written only by the registry code"),
    ("s3://scene-artifacts/models/registry.json", "written only by the registry code"),
    ("s3://scene-artifacts/runs/abc/result.json", "outside where this flow may write"),
    ("s3://scene-artifacts/predictions/../models/registry.json", "'..'"),
    ("s3://scene-data/predictions/x.csv", "not the artifact bucket"),
    ("/tmp/predictions.csv", "only to the artifact bucket"),
    ("s3://scene-artifacts/predictions/", "not a folder"),
    ("s3://scene-artifacts/predictions/x/", "not a folder"),
])
def test_predict_out_elsewhere_is_refused(uri: str, words: str) -> None:
    with pytest.raises(ValueError, match="s3://scene-artifacts/predictions/") as err:
        require_predictions_uri(uri, A)
    assert words in str(err.value) and "out=" in str(err.value) and uri in str(err.value)


@pytest.mark.parametrize("uri", [f"s3://scene-artifacts/runs/{PARENT}/", f"s3://scene-artifacts/runs/{OWN}/x/"])
def test_run_prefix_in_the_parent_or_own_run_folder(uri: str) -> None:
    assert require_run_prefix(uri, A, (PARENT, OWN)) == uri


@pytest.mark.parametrize(("uri", "words"), [
    (f"s3://scene-artifacts/runs/{OWN}/", "outside where this flow may write"),  # own id unknown: no parent given
    ("s3://scene-artifacts/runs/another-run/", "outside where this flow may write"),
    ("s3://scene-artifacts/runs/", "outside where this flow may write"),
    ("s3://scene-artifacts/models/", "written only by the registry code"),
    (f"s3://scene-artifacts/runs/{PARENT}/../other/", "'..'"),
    (f"s3://scene-data/runs/{PARENT}/", "not the artifact bucket"),
])
def test_run_prefix_elsewhere_is_refused(uri: str, words: str) -> None:
    with pytest.raises(ValueError, match=f"s3://scene-artifacts/runs/{PARENT}/") as err:
        require_run_prefix(uri, A, (PARENT, None))
    assert words in str(err.value) and "run_prefix_uri=" in str(err.value)


def test_run_prefix_outside_any_run_is_refused() -> None:
    with pytest.raises(ValueError, match="leave run_prefix_uri unset"):
        require_run_prefix(f"s3://scene-artifacts/runs/{PARENT}/", A, (None, None))


@pytest.mark.parametrize("key", ["sensors/watch-state.json", "sensors/test-1234.json", "sensors/watch/a.json"])
def test_state_key_under_sensors(key: str) -> None:
    assert require_state_key(key) == key


@pytest.mark.parametrize(("key", "words"), [
    ("models/champions/x.json", "lives under sensors/"),
    ("models/registry.json", "lives under sensors/"),
    ("runs/abc/result.json", "lives under sensors/"),
    ("sensors/reconcile-attempts.json", "belongs to another sensor"),
    ("sensors/../models/registry.json", "'..'"),
    ("/sensors/x.json", "not a key"),
    ("s3://scene-artifacts/sensors/x.json", "not a key"),
    ("sensors/state.csv", "ends in .json"),
])
def test_state_key_elsewhere_is_refused(key: str, words: str) -> None:
    with pytest.raises(ValueError, match=r"sensors/watch-state\.json") as err:
        require_state_key(key)
    assert words in str(err.value) and key in str(err.value)


def test_train_all_data_and_test_are_scoped() -> None:
    require_data_uris(A, data="s3://scene-data/datasets/x/", test=None)
    with pytest.raises(ValueError, match="test='s3://scene-artifacts/models/'"):
        require_data_uris(A, data="s3://scene-data/datasets/x/", test="s3://scene-artifacts/models/")


def test_extract_chunk_writes_only_to_the_workers_cache_or_under_features() -> None:
    from scene.data.scope import require_feature_cache

    mine = SimpleNamespace(artifact_bucket="scene-artifacts", feature_cache="/home/w/.cache/scene/features")
    assert require_feature_cache(None, mine) is None
    assert require_feature_cache("/home/w/.cache/scene/features", mine) == "/home/w/.cache/scene/features"
    assert require_feature_cache("s3://scene-artifacts/features/x/", mine) == "s3://scene-artifacts/features/x/"
    for bad, words in (("/etc/cron.d/", "flows write only to the artifact bucket"),
                       ("s3://scene-artifacts/models/", "registry"), ("s3://scene-artifacts/runs/x/", "outside"),
                       ("s3://other/features/", "not the artifact bucket")):
        with pytest.raises(ValueError, match=words):
            require_feature_cache(bad, mine)


def test_every_writing_flow_checks_its_locations_first() -> None:
    """Each flow calls its scope check before its first task (nothing is written before the check)."""
    import inspect

    from flows import extract_chunk, predict, read_chunk, train_all, train_backbone, watch

    for fn, check, first in ((predict.predict.fn, "require_predictions_uri", "resolve_model("),
                             (predict.predict_chunk.fn, "require_predictions_folder", "start_summary("),
                             (extract_chunk.extract_chunk.fn, "require_feature_cache", "start_summary("),
                             (read_chunk.read_chunk.fn, "require_run_prefix", "start_summary("),
                             (train_backbone.train_backbone.fn, "require_run_prefix", "start_summary("),
                             (watch.watch.fn, "require_state_key", "load_state("),
                             (train_all.train_all.fn, "require_data_uris", "start_summary(")):
        src = inspect.getsource(fn)
        assert 0 < src.index(check) < src.index(first), fn.__name__


def test_shipped_s3_policies_are_the_ones_the_stack_creates() -> None:
    """deployments/s3-policies/<role>.json = scene.ops.iam.policies() for the default buckets; no role but the
    workers may write the registry (models/), and the links identity writes nothing."""
    import json
    from pathlib import Path

    from scene.ops import iam

    folder = Path(__file__).resolve().parents[1] / "deployments" / "s3-policies"
    docs = iam.policies("scene-data", "scene-artifacts", "datasets/")
    assert {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} == docs
    for role, doc in docs.items():
        writes = [r for st in doc["Statement"] for r in st["Resource"]
                  if any(a in st["Action"] for a in ("s3:PutObject", "s3:DeleteObject"))]
        assert role == "scene-workers" or not any("models/" in r or r.endswith("/*") for r in writes), (role, writes)
    assert not [st for st in docs["scene-links"]["Statement"] if set(st["Action"]) - {"s3:GetObject"}]
