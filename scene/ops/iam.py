"""Least-privilege S3 identities: the policies of each workload, and the MinIO admin calls that create them.

The local gateway (``juicefs gateway``, MinIO-based) keeps users and canned policies in its volume and enforces
them (checked on juicefs 1.4.2: a user without a policy is denied everything; a policy applies at once). Roles:

``scene-readers``   read the data (get/list the data prefix): people, notebooks, a labelling tool
``scene-workers``   the flows: read the data (and ``incoming/``), read and write the artifact bucket (runs/,
                    features/, packs/, predictions/, sensors/, and models/ for registration)
``scene-bridge``    the event bridge: list the data prefix; its hourly reconcile reads the registry and manifests
                    (models/, runs/) and writes only its own history (sensors/reconcile-*)
``scene-links``     presigned links in Prefect artifacts: read-only runs/, predictions/ and the data (thumbnails);
                    never the registry, never a write

:func:`policies` builds the policy documents (AWS IAM JSON, which MinIO reads as is); ``deployments/s3-policies``
ships them for the default bucket names. The admin API needs no client binary: requests are SigV4-signed with
botocore and ``add-user`` bodies are encrypted as MinIO's madmin does (Argon2id key, AES-256-GCM, one 16 KiB
chunk), with the ``cryptography`` package Prefect already installs.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from scene.ops import http

ROLES = ("scene-readers", "scene-workers", "scene-bridge", "scene-links")


class IamError(RuntimeError):
    """The S3 server refused an admin call (or has no admin API); the message names the call and the answer."""


def _arn(bucket: str, key: str = "") -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key else "")


def _doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _list(bucket: str) -> dict[str, Any]:
    """ListBucket (and HeadBucket) on ``bucket``: key names and ETags, no content."""
    return {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": [_arn(bucket)]}


def _get(bucket: str, *prefixes: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [_arn(bucket, p + "*") for p in prefixes]}


def policies(data_bucket: str, artifact_bucket: str, data_prefix: str = "datasets/",
             incoming: str = "incoming/") -> dict[str, dict[str, Any]]:
    """The policy document of each role in :data:`ROLES` for these buckets and data prefix."""
    data = tuple(p for p in (data_prefix, incoming) if p) or ("",)
    write = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    return {
        "scene-readers": _doc(_list(data_bucket), _get(data_bucket, *data)),
        "scene-workers": _doc(
            _list(data_bucket), _get(data_bucket, *data),
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
             "Resource": [_arn(artifact_bucket)]},
            {"Effect": "Allow", "Action": ["s3:GetObject", *write], "Resource": [_arn(artifact_bucket, "*")]}),
        "scene-bridge": _doc(
            _list(data_bucket), _list(artifact_bucket), _get(artifact_bucket, "models/", "runs/", "sensors/"),
            {"Effect": "Allow", "Action": ["s3:PutObject"],
             "Resource": [_arn(artifact_bucket, "sensors/reconcile-*")]}),
        "scene-links": _doc(_get(artifact_bucket, "runs/", "predictions/"), _get(data_bucket, *data)),
    }


# --------------------------------------------------------------------------------- MinIO admin API


def _encrypt(payload: bytes, password: str) -> bytes:
    """MinIO madmin's ``EncryptData`` (Argon2id-derived key, AES-256-GCM, sio-style single chunk)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    if len(payload) > 16 * 1024:
        raise ValueError("admin payloads over 16 KiB are not needed here")
    salt, nonce = os.urandom(32), os.urandom(8)
    key = Argon2id(salt=salt, length=32, iterations=1, lanes=4, memory_cost=65536).derive(password.encode())
    gcm = AESGCM(key)
    header_tag = gcm.encrypt(nonce + b"\0\0\0\0", b"", None)  # GCM tag of nothing: the stream's associated data
    aad = b"\x80" + header_tag  # \x80: the final (and only) chunk
    return salt + b"\x00" + nonce + gcm.encrypt(nonce + (1).to_bytes(4, "little"), payload, aad)


def _admin(endpoint: str, access_key: str, secret_key: str, region: str, command: str, query: dict[str, str],
           body: bytes = b"") -> Any:
    """One signed ``PUT /minio/admin/v3/<command>`` call; the answer's text (raises :class:`IamError`)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"{endpoint.rstrip('/')}/minio/admin/v3/{command}?{urllib.parse.urlencode(sorted(query.items()))}"
    req = AWSRequest(method="PUT", url=url, data=body, headers={"Content-Type": "application/octet-stream"})
    S3SigV4Auth(Credentials(access_key, secret_key), "s3", region or "us-east-1").add_auth(req)
    prepared = req.prepare()
    out = urllib.request.Request(prepared.url, data=body, method="PUT", headers=dict(prepared.headers))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(out, timeout=30) as resp:
            return resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")[:300]
        raise IamError(f"S3 admin call {command} at {endpoint} answered {err.code}: {text} (the server needs the "
                       "MinIO admin API for per-workload identities; see docs/security.md)") from err
    except OSError as err:
        raise http.Unreachable(f"S3 admin call {command} at {endpoint}: no answer ({err})") from err


def ensure_identities(endpoint: str, root_access: str, root_secret: str, region: str,
                      identities: dict[str, dict[str, str]], docs: dict[str, dict[str, Any]]) -> None:
    """Create or update each role's canned policy and user (``identities``: role -> access/secret key), and
    attach the policy. Idempotent: rerunning rewrites the same users and policies."""
    for role, keys in identities.items():
        _admin(endpoint, root_access, root_secret, region, "add-canned-policy", {"name": role},
               json.dumps(docs[role]).encode())
        body = _encrypt(json.dumps({"status": "enabled", "secretKey": keys["secret_key"]}).encode(), root_secret)
        _admin(endpoint, root_access, root_secret, region, "add-user", {"accessKey": keys["access_key"]}, body)
        _admin(endpoint, root_access, root_secret, region, "set-user-or-group-policy",
               {"policyName": role, "userOrGroup": keys["access_key"], "isGroup": "false"})
