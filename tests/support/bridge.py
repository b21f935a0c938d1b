"""Talking to an event bridge in tests: its token, a gateway's notification body, a raw POST, the CLI parser."""

from __future__ import annotations

import http.client
import json
from typing import Any

from scene.ops.bridge import BridgeServer

TOKEN = "s3cret-token"


def minio_body(key: str, bucket: str = "scene-data", name: str = "s3:ObjectCreated:Put") -> bytes:
    """A MinIO/JuiceFS webhook body as documented in scene/ops/stack.py: one object, key URL-encoded in Records."""
    import urllib.parse

    return json.dumps({
        "EventName": name,
        "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-11-28T13:55:15Z",
            "eventName": name, "userIdentity": {"principalId": "AKIA"}, "requestParameters": {},
            "responseElements": {},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                   "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": urllib.parse.quote(key, safe=""), "size": 2, "eTag": "49f6",
                              "sequencer": "18EC", "userMetadata": {"content-type": "image/jpeg"}}},
            "source": {"host": "127.0.0.1", "port": "", "userAgent": "Boto3"}}],
    }).encode()


def post(server: BridgeServer, body: bytes, token: str | None = TOKEN, path: str = "/notify",
         length: int | None = None) -> tuple[int, Any]:
    """POST with http.client; ``length`` sends that Content-Length header with no body (an announced size)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.putrequest("POST", path)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body) if length is None else length))
        conn.endheaders()
        if length is None:
            conn.send(body)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def events_parser() -> Any:
    """An argparse parser with only ``scene events`` registered (as the CLI registers it)."""
    import argparse

    from scene.cli.events import register

    p = argparse.ArgumentParser(prog="scene")
    register(p.add_subparsers(dest="command", required=True))
    return p
