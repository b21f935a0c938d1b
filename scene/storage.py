"""Local folders and ``s3://bucket/prefix`` URIs behind one small interface.

Library functions take a boto3 client as an argument (``s3``); :func:`s3_client` builds one from
:class:`~scene.settings.Settings`. Every S3 error is re-raised as :class:`StorageError` naming the URI
and what to check, so a wrong endpoint, wrong credentials or a missing bucket fail with one clear message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from scene.settings import Settings


class StorageError(RuntimeError):
    """An object store or folder could not be read or written; the message says which and why."""


@dataclass(frozen=True)
class Location:
    """A parsed local path or ``s3://bucket/key`` URI."""

    bucket: str | None  # None for a local path
    key: str  # the key (S3) or the path (local)

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else self.key

    def join(self, *parts: str) -> Location:
        """A child location."""
        if self.is_s3:
            key = "/".join([self.key.rstrip("/"), *parts]) if self.key else "/".join(parts)
            return Location(self.bucket, key)
        return Location(None, str(Path(self.key, *parts)))


def parse(uri: str | os.PathLike[str]) -> Location:
    """Parse a local path or an ``s3://bucket/prefix`` URI."""
    text = str(uri)
    if text.startswith("s3://"):
        rest = text[len("s3://") :]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{text!r}: an S3 URI needs a bucket, like s3://my-bucket/prefix/")
        return Location(bucket, key)
    return Location(None, text)


def s3_client(settings: Settings, *, connect_timeout: float = 5.0, retries: int = 3) -> Any:
    """A boto3 S3 client for the configured endpoint and credentials."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=60,
        retries={"max_attempts": retries, "mode": "standard"},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        max_pool_connections=32,  # image readers run 16 threads at once (scene.pipeline.decode_workers)
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
        config=config,
    )


def explain(err: BaseException, loc: Location | str, endpoint: str | None = None) -> StorageError:
    """Turn a boto3/botocore error into one sentence naming the location and what to check."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = f"{loc}" + (f" (endpoint {endpoint})" if endpoint else "")
    if isinstance(err, EndpointConnectionError):
        return StorageError(f"{where}: cannot reach the S3 endpoint; is it running? Check AWS_ENDPOINT_URL.")
    if isinstance(err, NoCredentialsError):
        return StorageError(f"{where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        hints = {
            "NoSuchBucket": "the bucket does not exist; create it or fix the bucket name",
            "NoSuchKey": "no such object",
            "404": "no such object",
            "InvalidAccessKeyId": "wrong access key; check AWS_ACCESS_KEY_ID",
            "SignatureDoesNotMatch": "wrong secret key; check AWS_SECRET_ACCESS_KEY",
            "AccessDenied": "access denied; check the credentials' permissions",
            "403": "access denied; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        }
        return StorageError(f"{where}: {hints.get(code, f'S3 error {code}: {err}')}")
    return StorageError(f"{where}: {type(err).__name__}: {err}")


def _endpoint(s3: Any) -> str | None:
    return getattr(getattr(s3, "meta", None), "endpoint_url", None)


def list_files(uri: str | Location, s3: Any = None) -> Iterator[tuple[str, int]]:
    """Yield ``(key_or_path, size)`` for every file under a folder or S3 prefix, sorted.

    Locally, symlinks that leave the folder are skipped; :func:`list_local` also says which and why.
    """
    loc = parse(uri) if isinstance(uri, str) else uri
    if not loc.is_s3:
        yield from list_local(loc.key)[0]
        return
    if s3 is None:
        raise StorageError(f"{loc}: an S3 location needs an S3 client (configure AWS_ENDPOINT_URL etc.)")
    prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    yield f"s3://{loc.bucket}/{obj['Key']}", int(obj["Size"])
    except Exception as err:  # botocore raises many types; all become one clear message
        raise explain(err, loc, _endpoint(s3)) from err


def list_local(folder: str | Path) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """``([(path, size)], [(path, problem)])`` for a local folder, both sorted.

    Symlinks are followed only while they stay inside ``folder``: one that points outside it (or is broken,
    or loops) is listed with its problem instead, so a dataset folder can never read files from elsewhere.
    """
    root = Path(folder)
    if not root.is_dir():
        raise StorageError(f"{root}: not a folder (pass a folder of class folders or an s3:// URI)")
    real_root = root.resolve()
    files: list[tuple[str, int]] = []
    bad: list[tuple[str, str]] = []
    seen = {real_root}

    def walk(d: Path) -> None:
        for entry in sorted(d.iterdir()):
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(real_root):
                    bad.append((str(entry), f"symlink to {target}, outside the dataset folder {root}: copy the "
                                            "file in instead"))
                    continue
                if not target.exists():
                    bad.append((str(entry), f"broken symlink (to {target})"))
                    continue
            if entry.is_dir():
                real = entry.resolve()
                if real in seen:
                    bad.append((str(entry), f"symlink loop: {real} is already listed"))
                    continue
                seen.add(real)
                walk(entry)
            elif entry.is_file():
                files.append((str(entry), entry.stat().st_size))

    walk(root)
    return sorted(files), sorted(bad)


def safe_relative(name: str, where: str = "") -> PurePosixPath:
    """``name`` as a relative path that stays inside the folder it is joined to; raise :class:`StorageError` if not.

    Refused: empty names, absolute paths (``/x``, ``C:...``, ``\\x``), ``.``/``..`` parts, empty parts
    (``a//b``), backslashes and control characters — all signs of a hostile or broken object key.
    """
    what = f"{where}: " if where else ""
    problem = ""
    if not name:
        problem = "empty name"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problem = "control character in the name"
    elif "\\" in name:
        problem = "backslash in the name"
    elif name.startswith("/") or (len(name) > 1 and name[0].isalpha() and name[1] == ":"):
        problem = "absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "'.', '..' or empty path segment"
    if problem:
        raise StorageError(f"{what}refusing object name {name!r} ({problem}): it could write outside the "
                           "destination folder; rename the object")
    return PurePosixPath(name)


def safe_join(folder: str | Path, name: str, where: str = "") -> Path:
    """``folder / name`` after :func:`safe_relative`, checked once more to stay inside ``folder``."""
    base = Path(folder).resolve()
    path = base.joinpath(*safe_relative(name, where).parts)
    if not path.resolve().is_relative_to(base):  # e.g. a symlink already inside the folder
        raise StorageError(f"{where or name}: {path} resolves outside {base}; refusing to write there")
    return path


def download_prefix(prefix: str, folder: str | Path, s3: Any) -> list[Path]:
    """Download every object under an S3 prefix into ``folder`` (keys relative to the prefix).

    Every name is checked with :func:`safe_relative` before anything is downloaded, so a hostile key
    (``../x``, ``/etc/x``) fails the whole call and writes nothing.
    """
    base = prefix.rstrip("/") + "/"
    plan = []
    for uri, _ in list_files(base, s3):
        plan.append((uri, safe_join(folder, uri[len(base):], uri)))
    return [download_file(uri, path, s3) for uri, path in plan]


def read_bytes(uri: str, s3: Any = None) -> bytes:
    """The content of a local file or an S3 object."""
    loc = parse(uri)
    if not loc.is_s3:
        try:
            return Path(loc.key).read_bytes()
        except OSError as err:
            raise StorageError(f"{loc}: cannot read: {err.strerror or err}") from err
    try:
        return s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err


def exists(uri: str, s3: Any = None) -> bool:
    """Whether a file or object exists."""
    loc = parse(uri)
    if not loc.is_s3:
        return Path(loc.key).exists()
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=loc.bucket, Key=loc.key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise explain(err, loc, _endpoint(s3)) from err
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err


def write_bytes(uri: str, data: bytes, s3: Any = None) -> None:
    """Write a file atomically (local: temp file + rename) or put an S3 object."""
    loc = parse(uri)
    if not loc.is_s3:
        path = Path(loc.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return
    try:
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err


def upload_file(path: str | Path, uri: str, s3: Any) -> str:
    """Upload a local file (multipart above 8 MiB, retried by boto3); return its sha256."""
    from boto3.s3.transfer import TransferConfig

    loc = parse(uri)
    digest = sha256_file(path)
    try:
        s3.upload_file(
            str(path),
            loc.bucket,
            loc.key,
            ExtraArgs={"Metadata": {"sha256": digest}},
            Config=TransferConfig(multipart_threshold=8 * 1024 * 1024),
        )
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err
    return digest


def download_file(uri: str, path: str | Path, s3: Any) -> Path:
    """Download an S3 object to a local file (atomically)."""
    loc = parse(uri)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        s3.download_file(loc.bucket, loc.key, str(tmp))
    except Exception as err:
        tmp.unlink(missing_ok=True)
        raise explain(err, loc, _endpoint(s3)) from err
    os.replace(tmp, path)
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def upload_dir(local_dir: str | Path, prefix: str, s3: Any) -> list[dict[str, Any]]:
    """Upload every file under ``local_dir`` to ``prefix`` plus a ``checksums.json``; return what was uploaded."""
    root = Path(local_dir)
    uploaded = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "checksums.json"):
        uri = prefix.rstrip("/") + "/" + path.relative_to(root).as_posix()
        uploaded.append({"uri": uri, "sha256": upload_file(path, uri, s3), "bytes": path.stat().st_size})
    import json

    write_bytes(prefix.rstrip("/") + "/checksums.json", json.dumps(uploaded, indent=2).encode(), s3)
    return uploaded


MAX_LINK_SECONDS = 3600  # presigned links shown in the Prefect UI expire within the hour


def presigned_url(uri: str, s3: Any, expires: int = MAX_LINK_SECONDS) -> str:
    """A time-limited HTTP link to an S3 object (for the Prefect UI); at most :data:`MAX_LINK_SECONDS`."""
    if not 1 <= expires <= MAX_LINK_SECONDS:
        raise ValueError(f"presigned_url(expires={expires}): links may last 1..{MAX_LINK_SECONDS} seconds; "
                         "share the s3:// URI for longer-lived references")
    loc = parse(uri)
    return s3.generate_presigned_url("get_object", Params={"Bucket": loc.bucket, "Key": loc.key}, ExpiresIn=expires)
