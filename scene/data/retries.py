"""Riding out a short outage of the S3 store: retry a whole call with exponential backoff within a time budget.

botocore retries each request a few times within a few seconds; an S3 server that restarts takes longer. :func:`call`
retries an operation on errors that can succeed later — connection refused, reset or timed out, HTTP 5xx, SlowDown —
sleeping :data:`FIRST_DELAY_S` doubled after each attempt up to :data:`MAX_DELAY_S` (±50 % jitter), until the
client's budget is spent (:func:`budget`: :data:`RETRY_S` unless ``scene.data.storage.s3_client(..., retry_s=)`` set
another), then re-raises the last error with a note saying how long it retried. Errors that cannot succeed on retry
(no such key, access denied, a lost compare-and-swap) are re-raised at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

RETRY_S = 60.0  # how long one S3 call keeps retrying an unreachable or failing store before it gives up
FIRST_DELAY_S = 0.5  # the first wait between attempts; doubles after each
MAX_DELAY_S = 8.0  # the longest wait between attempts
_ATTR = "scene_retry_s"  # where a client carries its own budget
_RETRYABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500", "502", "504"}


def budget(s3: Any) -> float:
    """The seconds a call through this client may spend retrying (:data:`RETRY_S` unless set)."""
    return float(getattr(s3, _ATTR, RETRY_S))


def set_budget(s3: Any, seconds: float) -> Any:
    """Give a client its own retry budget (0 = fail at the first error); returns the client."""
    if seconds < 0:
        raise ValueError(f"retry_s={seconds}: pass a number of seconds >= 0 (0 disables retrying)")
    setattr(s3, _ATTR, float(seconds))
    return s3


def transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it wraps) is one that a later attempt can get past."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
            return True
        if isinstance(e, ClientError):
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return status >= 500 or str(e.response.get("Error", {}).get("Code", "")) in _RETRYABLE_CODES
        e = e.__cause__ or e.__context__
    return False


def _note(err: BaseException, text: str) -> None:
    notes = getattr(err, "__notes__", None)
    if notes is None:
        notes = []
        err.__notes__ = notes  # type: ignore[attr-defined]
    notes.append(text)


def call(s3: Any, fn: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried on transient errors with exponential backoff until the client's budget is spent."""
    start = time.monotonic()
    deadline = start + budget(s3)
    delay, attempts = FIRST_DELAY_S, 0
    while True:
        attempts += 1
        try:
            return fn()
        except Exception as err:
            left = deadline - time.monotonic()
            if not transient(err):
                raise
            if left <= 0:
                if attempts > 1:
                    _note(err, f"gave up after {attempts} attempts over {time.monotonic() - start:.0f} s "
                               f"(retry budget {budget(s3):.0f} s; raise it with s3_client(..., retry_s=))")
                raise
            sleep(min(left, delay * (0.5 + random.random())))
            delay = min(delay * 2, MAX_DELAY_S)
