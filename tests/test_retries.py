"""scene.data.retries: which errors are retried, how long it waits, and what it says when it gives up (no server; the
real-gateway outage is tests/faults/test_s3_outage.py)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from scene.data import retries, storage
from scene.settings import Settings


class Client:
    """Anything can carry a retry budget; a plain object stands in for the boto3 client here."""


def _flaky(errors: list[Exception]) -> Any:
    calls = []

    def fn() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return "done"

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_transient_errors_are_retried_with_doubling_backoff() -> None:
    waits: list[float] = []
    fn = _flaky([EndpointConnectionError(endpoint_url="http://x"), _client_error("SlowDown", 503),
                 _client_error("InternalError", 500)])
    assert retries.call(retries.set_budget(Client(), 60), fn, sleep=waits.append) == "done"
    assert len(fn.calls) == 4
    assert all(0.5 * d <= w <= 1.5 * d for w, d in zip(waits, (0.5, 1, 2), strict=True)), waits


@pytest.mark.parametrize("err", [_client_error("NoSuchKey", 404), _client_error("AccessDenied", 403),
                                 _client_error("PreconditionFailed", 412), ValueError("bad")])
def test_errors_that_cannot_succeed_later_are_raised_at_once(err: Exception) -> None:
    fn = _flaky([err])
    with pytest.raises(type(err)):
        retries.call(retries.set_budget(Client(), 60), fn, sleep=lambda s: None)
    assert len(fn.calls) == 1


def test_an_exhausted_budget_is_said_in_the_storage_error() -> None:
    fn = _flaky([EndpointConnectionError(endpoint_url="http://x")] * 50)
    with pytest.raises(EndpointConnectionError) as info:
        retries.call(retries.set_budget(Client(), 0.3), fn, sleep=lambda s: __import__("time").sleep(0.05))
    said = str(storage.explain(info.value, "s3://b/k"))
    assert said.startswith("s3://b/k: cannot reach the S3 endpoint") and "retry budget 0 s" in said
    assert "gave up after" in said and len(fn.calls) > 1


def test_the_client_carries_its_budget() -> None:
    assert retries.budget(storage.s3_client(Settings(), retry_s=7)) == 7.0
    assert retries.budget(storage.s3_client(Settings())) == retries.RETRY_S
    with pytest.raises(ValueError, match="retry_s=-1"):
        retries.set_budget(Client(), -1)
