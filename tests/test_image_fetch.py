"""The light S3 image reader's errors without a store: the same sentence as every other scene S3 call."""

from __future__ import annotations

import socket

import pytest

from scene.data import image_fetch, storage
from scene.settings import Settings


def test_an_unreachable_store_is_named_with_what_to_check() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="k", aws_secret_access_key="s")
    s3 = storage.s3_client(settings, retry_s=0)
    assert image_fetch._signed_get(s3) is not None
    with pytest.raises(storage.StorageError, match=r"s3://b/k\.jpg .*cannot reach the S3 endpoint"):
        image_fetch.reader(s3)("s3://b/k.jpg")
