"""Every Prefect task and flow declares a timeout; tasks that retry retry only errors a later attempt can get past."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(p for folder in ("tasks", "flows") for p in (REPO / folder).glob("*.py") if p.name != "__init__.py")


def _decorated(path: Path) -> list[tuple[str, str, ast.expr]]:
    """``(function name, "task"|"flow", decorator)`` for every function decorated with Prefect's task or flow."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Name) and target.id in ("task", "flow"):
                    out.append((node.name, target.id, dec))
    return out


def test_every_task_and_flow_declares_a_timeout() -> None:
    found = 0
    for path in MODULES:
        for name, kind, dec in _decorated(path):
            found += 1
            where = f"{path.relative_to(REPO)}: @{kind} {name}"
            keywords = {k.arg for k in dec.keywords} if isinstance(dec, ast.Call) else set()
            assert "timeout_seconds" in keywords, f"{where} has no timeout_seconds=; pass one (tasks.common)"
            obj = getattr(importlib.import_module(f"{path.parent.name}.{path.stem}"), name)
            assert obj.timeout_seconds and obj.timeout_seconds > 0, where
    assert found >= 25, f"only {found} tasks/flows found: did the folders move?"


def test_no_task_uses_prefects_result_cache() -> None:
    """Values reused across steps or workers are S3 objects with explicit paths (manifest.csv, result.json, models,
    feature shards), never Prefect cache records that could point at a worker's local disk or outlive their files."""
    from prefect.cache_policies import NO_CACHE

    found = 0
    for path in MODULES:
        for name, kind, _ in _decorated(path):
            if kind == "task":
                found += 1
                obj = getattr(importlib.import_module(f"{path.parent.name}.{path.stem}"), name)
                assert obj.cache_policy is NO_CACHE and not obj.persist_result, \
                    f"{path.relative_to(REPO)}: @task {name} must pass cache_policy=NO_CACHE"
    assert found >= 20, f"only {found} tasks found"


def test_tasks_that_retry_back_off_and_retry_only_transient_errors() -> None:
    from prefect import Task

    from tasks.common import transient_only

    retrying = 0
    for path in MODULES:
        module = importlib.import_module(f"{path.parent.name}.{path.stem}")
        for name, kind, _ in _decorated(path):
            t = getattr(module, name)
            if kind != "task" or not isinstance(t, Task) or not t.retries:
                continue
            retrying += 1
            assert t.retry_condition_fn is transient_only, f"{path.name}: {name} retries every error"
            delays = list(t.retry_delay_seconds) if isinstance(t.retry_delay_seconds, list) else []
            assert delays == sorted(delays) and (len(delays) < 2 or delays[-1] > delays[0]), (name, delays)
    assert retrying >= 15, retrying


def _failed(err: BaseException):
    from prefect.states import Failed

    return Failed(data=err, message=str(err))


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        ("missing weights", False),
        ("validation", False),
        ("tampered file", False),
        ("bad argument", False),
        ("step timed out", False),
        ("S3 unreachable", True),
        ("S3 503", True),
    ],
)
def test_retry_condition(error: str, retried: bool) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError
    from prefect.task_engine import TaskRunTimeoutError

    from scene.data.storage import StorageError
    from scene.model.backbones import WeightsUnavailable
    from scene.registry.integrity import IntegrityError
    from tasks.common import transient_only
    from tasks.data import DataValidationFailed

    def wrapped(cause: BaseException) -> StorageError:  # how scene.data.storage reports an outage
        try:
            raise StorageError("s3://b/k: cannot reach the S3 endpoint") from cause
        except StorageError as err:
            return err

    errors = {
        "missing weights": WeightsUnavailable("vgg16: vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 not found"),
        "validation": DataValidationFailed("the data failed validation"),
        "tampered file": IntegrityError("s3://b/v/model.keras: sha256 does not match"),
        "bad argument": ValueError("views=-1 is invalid"),
        "step timed out": TaskRunTimeoutError("Scope timed out after 5 second(s)."),
        "S3 unreachable": wrapped(EndpointConnectionError(endpoint_url="http://127.0.0.1:1")),
        "S3 503": ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}},
                              "PutObject"),
    }
    assert transient_only(None, None, _failed(errors[error])) is retried


def _dtype_max_interrupted() -> None:
    """What ``tf.dtypes.DType.max`` does when a SIGTERM lands inside its bare ``except:``."""
    from prefect.exceptions import TerminationSignal

    try:
        try:
            raise ValueError("not a float type")
        except BaseException:
            raise TerminationSignal(15) from None  # the signal handler fires here
    except BaseException:
        raise TypeError("Cannot find maximum value of <dtype: 'int32'>.")  # noqa: B904 (as TensorFlow does)


def test_a_sigterm_a_library_turned_into_another_error_reaches_prefect_as_the_sigterm() -> None:
    """An evicted backbone run is rescheduled, not Failed, when its SIGTERM lands inside TensorFlow (seen in CI:
    Keras' deserialisation turned it into a TypeError and the run failed)."""
    from prefect.exceptions import TerminationSignal

    from tasks.common import keeps_termination, termination_in

    with pytest.raises(TerminationSignal) as raised:
        keeps_termination(_dtype_max_interrupted)()
    assert isinstance(raised.value.__cause__, TypeError)

    def plain() -> None:
        raise TypeError("an ordinary error")

    with pytest.raises(TypeError, match="ordinary"):
        keeps_termination(plain)()
    assert termination_in(RuntimeError("x")) is None


def test_every_flow_keeps_a_sigterm_and_still_validates_its_parameters() -> None:
    """Each flow that runs TensorFlow is wrapped (under ``@flow``), and Prefect still resolves its annotations and
    validates parameters as a deployment run does (a wrapper with the wrong globals failed every dispatched run)."""
    import flows.predict
    import flows.retrain
    import flows.train_all
    import flows.train_backbone
    from scene.train.params import TrainParams

    for flow in (flows.predict.predict, flows.predict.predict_chunk, flows.retrain.retrain,
                 flows.retrain.retrain_dataset, flows.train_all.train_all, flows.train_backbone.train_backbone):
        assert getattr(flow.fn, "__wrapped__", None) is not None, flow.name
        assert flow.fn.__globals__ is flow.fn.__wrapped__.__globals__, flow.name
    validated = flows.train_backbone.train_backbone.validate_parameters(
        {"backbone": "mobilenetv2", "params": TrainParams(epochs=2).model_dump(), "on_missing_weights": "fail"})
    assert validated["params"] == TrainParams(epochs=2)
