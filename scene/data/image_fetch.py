"""Reading many small image objects from S3 with little CPU per object.

boto3's ``get_object`` spends ~3.4 ms of CPU per object here (its event hooks, request and response parsing, all
under the GIL): on a 2-core machine that CPU comes straight out of the backbone's share. The same GET, signed with
botocore's own SigV4 signer and sent through a urllib3 connection pool, costs less than half
(``benchmarks/s3_reads.py``). Same credentials, same endpoint, the same retries on an unreachable store
(:mod:`scene.data.retries`), the same errors (:func:`scene.data.storage.explain`). Clients that are not
path-style with an explicit endpoint (e.g. AWS virtual-hosted buckets) use ``get_object``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from scene.data import retries, storage

Fetch = Callable[[str], bytes]  # s3:// URI → the object's bytes


def reader(s3: Any) -> Fetch:
    """A function reading ``s3://bucket/key`` URIs (and local paths) with the credentials of client ``s3``."""
    fast = _signed_get(s3) if s3 is not None else None
    if fast is None:
        return lambda uri: storage.read_bytes(uri, s3)

    def fetch(uri: str) -> bytes:
        loc = storage.parse(uri)
        return fast(loc) if loc.is_s3 else storage.read_bytes(uri, s3)

    return fetch


@functools.lru_cache(maxsize=8)
def _signed_get(s3: Any) -> Callable[[storage.Location], bytes] | None:
    """Signed GETs over a shared urllib3 pool for a path-style client with an endpoint; None otherwise."""
    import urllib3
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest

    meta = s3.meta
    credentials = getattr(getattr(s3, "_request_signer", None), "_credentials", None)  # botocore keeps them here
    style = (getattr(meta.config, "s3", None) or {}).get("addressing_style")
    if not meta.endpoint_url or style != "path" or credentials is None:
        return None
    base = meta.endpoint_url.rstrip("/")
    timeout = urllib3.Timeout(connect=meta.config.connect_timeout, read=meta.config.read_timeout)
    pool = urllib3.PoolManager(maxsize=meta.config.max_pool_connections, timeout=timeout, retries=False)

    def signed_get(loc: storage.Location) -> bytes:
        request = AWSRequest(method="GET", url=f"{base}/{loc.bucket}/{quote(loc.key, safe='/~')}")
        S3SigV4Auth(credentials, "s3", meta.region_name).add_auth(request)
        try:
            response = pool.request("GET", request.url, headers=dict(request.headers.items()))
        except urllib3.exceptions.HTTPError as err:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=base, error=err) from err
        if response.status != 200:
            raise _client_error(response.status, response.data)
        return response.data

    def get(loc: storage.Location) -> bytes:
        try:  # an unreachable or failing store is retried like every scene S3 call (scene.data.retries)
            return retries.call(s3, lambda: signed_get(loc))
        except Exception as err:
            raise storage.explain(err, loc, base) from err

    return get


def _client_error(status: int, body: bytes) -> Exception:
    """The botocore ``ClientError`` that ``get_object`` would raise for this error response."""
    from botocore.exceptions import ClientError

    found = re.search(rb"<Code>([^<]+)</Code>", body)
    code = found.group(1).decode() if found else str(status)
    message = re.search(rb"<Message>([^<]*)</Message>", body)
    error = {"Code": code, "Message": message.group(1).decode() if message else ""}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
