"""Looking for a stack's secrets everywhere they could leak: the Prefect API's records, service logs, S3 objects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from scene.ops import http

TEXT_SUFFIXES = (".json", ".csv", ".md", ".html", ".txt", ".yaml", ".yml", ".log")  # what a secret could be written in
QUERIES = (("work pools", "/work_pools/filter", {}), ("deployments", "/deployments/filter", {}),
           ("flow runs", "/flow_runs/filter", {"limit": 200}), ("artifacts", "/artifacts/filter", {"limit": 200}),
           ("logs", "/logs/filter", {"limit": 200}), ("blocks", "/block_documents/filter", {"include_secrets": False}))


def secrets_of(state: Path) -> list[str]:
    """The stack's S3 secret keys (root and every identity), the bridge token and the Prefect API auth string."""
    creds = json.loads((state / "credentials.json").read_text())
    found = [creds["secret_key"], creds.get("events_token"), creds["prefect_auth_string"],
             *(keys["secret_key"] for keys in creds.get("identities", {}).values())]
    return [s for s in found if s]


def api_records(env: dict[str, str], pages: int = 1) -> dict[str, list[Any]]:
    """Every record kind :data:`QUERIES` names, from the stack's Prefect API (authenticated); up to ``pages`` pages
    of 200 of the paged kinds (flow runs, artifacts, logs)."""
    auth = http.auth_headers(auth_string=env["PREFECT_API_AUTH_STRING"])
    out: dict[str, list[Any]] = {}
    for what, path, body in QUERIES:
        out[what] = []
        for page in range(pages if "limit" in body else 1):
            query = {**body, "offset": page * 200} if "limit" in body else body
            code, answer = http.call("POST", env["PREFECT_API_URL"] + path, query, headers=auth)
            assert code == 200 and isinstance(answer, list), (what, code, answer)
            out[what] += answer
            if len(answer) < body.get("limit", 0) or "limit" not in body:
                break
    return out


def text_objects(s3: Any, buckets: list[str], suffixes: tuple[str, ...] | None = None) -> dict[str, str]:
    """``s3://bucket/key`` -> text of every object (only those ending in one of ``suffixes``, or without a suffix,
    when given: :data:`TEXT_SUFFIXES` skips the model files and images of a stack that trained)."""
    out = {}
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if suffixes is None or name.endswith(suffixes) or "." not in name:
                    body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    out[f"s3://{bucket}/{obj['Key']}"] = body.decode(errors="replace")
    return out


def stack_status(state: Path) -> str:
    """``scene stack status --state <state>``'s output (it must succeed)."""
    done = subprocess.run([str(Path(sys.executable).with_name("scene")), "stack", "status", "--state", str(state)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def leaks(secrets: list[str], texts: dict[str, str]) -> list[str]:
    """Where (the ``texts`` key) any of ``secrets`` appears."""
    assert secrets and all(len(s) >= 8 for s in secrets), "no secrets to look for"
    return [where for where, text in texts.items() for s in secrets if s in text]
