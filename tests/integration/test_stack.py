"""The local stack for real: JuiceFS S3 gateway, Prefect server, process workers, webhook notifications."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config

from scene.data.storage import StorageError, read_bytes, s3_client, write_bytes
from scene.ops import stack as stack_mod
from scene.ops.stack import StackInfo
from scene.settings import Settings
from tests.support.webhook import WEBHOOK_TOKEN, WebhookListener

pytestmark = pytest.mark.integration


def test_up_is_idempotent(stack: StackInfo, stack_args: dict[str, Any] | None) -> None:
    if stack_args is None:
        pytest.skip("reusing a running stack: its up() arguments are unknown")
    before = stack_mod.info(stack_args["state_dir"])  # now (a fault test may have restarted a service since)
    start = time.monotonic()
    again = stack_mod.up(**stack_args)
    assert time.monotonic() - start < 60  # no service waited for (a restart waits minutes under load); see pids
    assert again == before  # same pids: nothing was restarted
    assert set(again.pids) == {"s3", "prefect", "worker-default", "worker-gpu"}


def test_buckets_exist(s3: Any, settings: Settings) -> None:
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert {settings.data_bucket, settings.artifact_bucket} <= names


def test_credentials_file_is_private(stack: StackInfo) -> None:
    path = stack.state_dir / "credentials.json"
    assert path.stat().st_mode & 0o777 == 0o600
    creds = json.loads(path.read_text())
    assert set(creds) == {"access_key", "secret_key", "prefect_auth_string", "identities"}  # root, API, workloads
    assert set(creds["identities"]) == {"scene-readers", "scene-workers", "scene-bridge", "scene-links"}


def test_put_get_round_trip(s3: Any, settings: Settings) -> None:
    key = f"tests/{uuid.uuid4().hex}/blob.bin"
    data = os.urandom(100_000)
    s3.put_object(Bucket=settings.artifact_bucket, Key=key, Body=data, Metadata={"sha256": "abc"})
    got = s3.get_object(Bucket=settings.artifact_bucket, Key=key)
    assert got["Body"].read() == data
    assert got["Metadata"] == {"sha256": "abc"}
    uri = f"s3://{settings.data_bucket}/{key}"
    write_bytes(uri, b"hello", s3)
    assert read_bytes(uri, s3) == b"hello"


def test_a_listing_streams_page_by_page_and_yields_every_key_once(s3: Any, settings: Settings) -> None:
    """list_objects follows the continuation token: pages of 2 keys give the same 7 keys, sorted, as one page."""
    from scene.data.storage import list_objects

    prefix = f"s3://{settings.artifact_bucket}/paging-{uuid.uuid4().hex[:8]}/"
    for i in range(7):
        write_bytes(f"{prefix}k{i}", b"x" * i, s3)
    calls: list[dict[str, Any]] = []
    def hook(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    s3.meta.events.register("before-parameter-build.s3.ListObjectsV2", hook)
    try:
        paged = list(list_objects(prefix, s3, page=2))
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", hook)
    assert paged == list(list_objects(prefix, s3)) and [u for u, _, _ in paged] == [f"{prefix}k{i}" for i in range(7)]
    assert [size for _, size, _ in paged] == list(range(7)) and len(calls) == 4  # 2 + 2 + 2 + 1


def test_the_gateway_with_metadata_caches_sees_its_own_writes_at_once(s3: Any, settings: Settings) -> None:
    """GATEWAY_CACHE keeps 60 s metadata caches: every overwrite, size change and delete is visible at once."""
    key, bucket = f"consistency/{uuid.uuid4().hex}.bin", settings.artifact_bucket
    for i in range(25):
        body = os.urandom(1 + (i * 977) % 5000)  # new content, new length each time
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, i
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(body), i
        if i % 5 == 4:
            s3.delete_object(Bucket=bucket, Key=key)
            with pytest.raises(s3.exceptions.NoSuchKey):
                s3.get_object(Bucket=bucket, Key=key)
            listed = s3.list_objects_v2(Bucket=bucket, Prefix="consistency/").get("Contents", [])
            assert key not in [o["Key"] for o in listed], i


def test_status_reports_healthy_without_leaking_secrets(stack: StackInfo) -> None:
    report = stack_mod.status(stack.state_dir)
    assert report["healthy"], report
    pids = stack_mod.info(stack.state_dir).pids  # now (a fault test may have restarted a service since)
    for name in ("s3", "prefect", "worker-default"):
        service = report["services"][name]
        assert service["running"] and service["healthy"] and service["pid"] == pids[name], service
    assert report["services"]["s3"]["url"] == stack.s3_endpoint
    creds = json.loads((stack.state_dir / "credentials.json").read_text())
    text = json.dumps(report)
    assert creds["secret_key"] not in text and creds["access_key"] not in text
    assert report["access_key"] == creds["access_key"][:4] + "…"


def test_env_lines_work_in_a_shell_and_with_boto3(stack: StackInfo, settings: Settings) -> None:
    lines = stack_mod.env_lines(stack.state_dir)
    env: dict[str, str] = {}
    for line in lines:
        word, assignment = shlex.split(line)
        assert word == "export"
        name, _, value = assignment.partition("=")
        env[name] = value
    assert {"PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "SCENE_DATA_BUCKET", "SCENE_ARTIFACT_BUCKET", "SCENE_DATA_PREFIX"} <= set(env)
    assert env["PREFECT_API_URL"] == stack.prefect_api_url
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    assert env["SCENE_DATA_BUCKET"] in {b["Name"] for b in client.list_buckets()["Buckets"]}
    from_env = Settings.from_env(env)
    assert (from_env.s3_endpoint_url, from_env.aws_access_key_id, from_env.data_bucket) == (
        settings.s3_endpoint_url, settings.aws_access_key_id, settings.data_bucket)
    # what `eval "$(scene stack env)"` does
    shell = subprocess.run(["bash", "-c", 'eval "$LINES"; printf %s "$AWS_SECRET_ACCESS_KEY"'],
                           env={"LINES": "\n".join(lines), "PATH": os.environ["PATH"]},
                           capture_output=True, text=True, check=True)
    assert shell.stdout == env["AWS_SECRET_ACCESS_KEY"]


def test_wrong_credentials_give_a_clear_storage_error(settings: Settings) -> None:
    uri = f"s3://{settings.data_bucket}/anything"
    bad_secret = s3_client(settings.replace(aws_secret_access_key="not-the-secret"), retries=1)
    with pytest.raises(StorageError, match="wrong secret key"):
        read_bytes(uri, bad_secret)
    bad_key = s3_client(settings.replace(aws_access_key_id="nobody"), retries=1)
    with pytest.raises(StorageError, match="wrong access key"):
        read_bytes(uri, bad_key)


def test_webhook_fires_on_object_put(
    stack: StackInfo, stack_args: dict[str, Any] | None, s3: Any, settings: Settings,
    webhook_listener: WebhookListener,
) -> None:
    if stack_args is None:
        pytest.skip("reusing a running stack: its webhook does not point at this test's listener")
    bucket, run = settings.data_bucket, uuid.uuid4().hex[:8]
    prefix = f"{settings.data_prefix}hook-{run}/"
    config = stack_mod.configure_bucket_notification(s3, bucket, prefix, (".jpg", ".png"))
    assert len(config["QueueConfigurations"]) == 2
    for key in (f"{prefix}notes.txt", f"other-{run}/a.jpg", f"{prefix}street/a.png", f"{prefix}sea/b.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"img")
    for key in (f"{prefix}street/a.png", f"{prefix}sea/b.jpg"):
        req = webhook_listener.wait_for(
            lambda r, k=key: isinstance(r["body"], dict) and r["body"].get("Key") == f"{bucket}/{k}"
        )
    print("webhook request:", json.dumps(req, indent=1))
    body = req["body"]
    assert req["headers"]["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert req["headers"]["Content-Type"] == "application/json"
    assert {"EventName", "Key", "Records"} <= set(body)
    assert body["EventName"] == "s3:ObjectCreated:Put"
    record = body["Records"][0]
    assert record["s3"]["bucket"]["name"] == bucket
    assert record["s3"]["object"]["size"] == 3
    time.sleep(0.5)
    keys = {r["body"]["Key"] for r in webhook_listener.requests if isinstance(r["body"], dict)}
    assert f"{bucket}/{prefix}notes.txt" not in keys and f"{bucket}/other-{run}/a.jpg" not in keys


@pytest.mark.slow
def test_data_survives_restart(stack: StackInfo, stack_args: dict[str, Any] | None, s3: Any,
                               settings: Settings) -> None:
    if stack_args is None:
        pytest.skip("reusing a running stack: not restarting someone else's stack")
    key = f"tests/{uuid.uuid4().hex}/persist.txt"
    s3.put_object(Bucket=settings.data_bucket, Key=key, Body=b"still here")
    stopped = stack_mod.down(stack.state_dir)
    assert set(stopped) == set(stack.pids)
    report = stack_mod.status(stack.state_dir)
    assert not any(s["running"] for s in report["services"].values()), report
    assert not list((stack.state_dir / "pids").glob("*.pid"))
    info = stack_mod.up(**stack_args)
    assert set(info.pids) == set(stack.pids)
    fresh = s3_client(stack_mod.settings_for(info.state_dir))
    assert fresh.get_object(Bucket=settings.data_bucket, Key=key)["Body"].read() == b"still here"
    assert stack_mod.status(info.state_dir)["healthy"]
