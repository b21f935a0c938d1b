"""The light S3 image reader against the real local gateway: same bytes and same errors as boto3's get_object."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config

from scene.data import image_fetch, storage

pytestmark = pytest.mark.integration


def test_signed_get_returns_what_get_object_returns(s3: Any, env: dict[str, str]) -> None:
    """Keys with spaces, plus signs, unicode and nested folders read back byte for byte, via the fast path."""
    bucket = env["SCENE_DATA_BUCKET"]
    keys = ["fetch/plain.jpg", "fetch/with space+plus.jpg", "fetch/ünï/çødé (1).jpg", "fetch/a~b/c=d&e.jpg"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=bytes([i]) * (1000 + i))
    assert image_fetch._signed_get(s3) is not None  # this client is path-style with an endpoint: the fast path
    fetch = image_fetch.reader(s3)
    for key in keys:
        assert fetch(f"s3://{bucket}/{key}") == s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_signed_get_errors_name_the_object_and_the_cause(s3: Any, env: dict[str, str]) -> None:
    bucket = env["SCENE_DATA_BUCKET"]
    with pytest.raises(storage.StorageError, match=rf"s3://{bucket}/fetch/missing.jpg.*no such object"):
        image_fetch.reader(s3)(f"s3://{bucket}/fetch/missing.jpg")
    wrong = boto3.client("s3", endpoint_url=s3.meta.endpoint_url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key="not-the-secret", region_name=s3.meta.region_name,
                         config=Config(s3={"addressing_style": "path"}))
    s3.put_object(Bucket=bucket, Key="fetch/secret.jpg", Body=b"x")
    with pytest.raises(storage.StorageError, match="wrong secret key"):
        image_fetch.reader(wrong)(f"s3://{bucket}/fetch/secret.jpg")


def test_virtual_hosted_clients_fall_back_to_get_object(s3: Any, env: dict[str, str]) -> None:
    virtual = boto3.client("s3", endpoint_url=s3.meta.endpoint_url, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=s3.meta.region_name,
                           config=Config(s3={"addressing_style": "virtual"}))
    assert image_fetch._signed_get(virtual) is None
