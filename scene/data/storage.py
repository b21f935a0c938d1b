"""Local folders and ``s3://bucket/prefix`` URIs behind one small interface.

Library functions take a boto3 client as an argument (``s3``); :func:`s3_client` builds one from
:class:`~scene.settings.Settings`. Every S3 error is re-raised as :class:`StorageError` naming the URI
and what to check, so a wrong endpoint, wrong credentials or a missing bucket fail with one clear message.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from scene.data.retries import RETRY_S, set_budget
from scene.data.retries import call as _retry
from scene.errors import SceneError
from scene.settings import Settings


class StorageError(SceneError, RuntimeError):
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


def s3_client(settings: Settings, *, connect_timeout: float = 5.0, retries: int = 3, retry_s: float = RETRY_S) -> Any:
    """A boto3 S3 client for the configured endpoint and credentials.

    ``retry_s``: how long each storage call through it keeps retrying an unreachable or failing store
    (:mod:`scene.data.retries`; botocore's own ``retries`` attempts happen inside each of those attempts).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=60,
        retries={"max_attempts": retries, "mode": "standard"},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        max_pool_connections=32,  # image readers run 16 threads at once (scene.model.pipeline.decode_workers)
    )
    return set_budget(boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
        config=config,
    ), retry_s)


def explain(err: BaseException, loc: Location | str, endpoint: str | None = None) -> StorageError:
    """Turn a boto3/botocore error into one sentence naming the location and what to check."""
    said = _explain(err, loc, endpoint)
    notes = getattr(err, "__notes__", None)  # e.g. how long scene.data.retries retried
    return StorageError(f"{said} ({'; '.join(notes)})") if notes else said


def _explain(err: BaseException, loc: Location | str, endpoint: str | None) -> StorageError:
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
    yield from ((uri, size) for uri, size, _ in list_objects(loc, s3))


def list_objects(uri: str | Location, s3: Any, *, page: int | None = None) -> Iterator[tuple[str, int, str]]:
    """Yield ``(s3 URI, size, ETag without quotes)`` for every object under an S3 prefix, sorted by key, one page
    (``page`` keys; the server's default, 1,000) in memory at a time."""
    loc = parse(uri) if isinstance(uri, str) else uri
    if s3 is None:
        raise StorageError(f"{loc}: an S3 location needs an S3 client (configure AWS_ENDPOINT_URL etc.)")
    prefix = loc.key if not loc.key or loc.key.endswith("/") else loc.key + "/"
    token: str | None = None
    while True:  # one page (≤ 1,000 keys) in memory at a time, each retried through outages
        args = {"Bucket": loc.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {}),
                **({"MaxKeys": page} if page else {})}
        try:
            listed = _retry(s3, lambda args=args: s3.list_objects_v2(**args))
        except Exception as err:  # botocore raises many types; all become one clear message
            raise explain(err, loc, _endpoint(s3)) from err
        for obj in listed.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield f"s3://{loc.bucket}/{obj['Key']}", int(obj["Size"]), str(obj.get("ETag", "")).strip('"')
        token = listed.get("NextContinuationToken") if listed.get("IsTruncated") else None
        if not token:
            return


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
        return _retry(s3, lambda: s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err


def exists(uri: str, s3: Any = None) -> bool:
    """Whether a file or object exists."""
    loc = parse(uri)
    if not loc.is_s3:
        return Path(loc.key).exists()
    from botocore.exceptions import ClientError

    try:
        _retry(s3, lambda: s3.head_object(Bucket=loc.bucket, Key=loc.key))
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise explain(err, loc, _endpoint(s3)) from err
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def _os_error(err: BaseException | None) -> OSError | None:
    """The first ``OSError`` in an exception's chain (Keras and zipfile wrap them), or None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen and not isinstance(err, OSError):
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err if isinstance(err, OSError) else None


def _write_failed(path: Path, err: BaseException) -> StorageError:
    """A write error as one sentence naming the file and what to do (disk full, read-only, no permission)."""
    cause = _os_error(err)
    code = cause.errno if cause is not None else None
    hint = {errno.ENOSPC: f"the disk holding {path.parent} is full; free space there or point the work folder / "
                          "feature cache (SCENE_WORK_DIR, SCENE_FEATURE_CACHE) at a larger disk",
            errno.EDQUOT: f"the disk quota for {path.parent} is exhausted; free space or raise the quota",
            errno.EROFS: f"{path.parent} is on a read-only file system; choose a writable folder",
            errno.EACCES: f"no permission to write in {path.parent}; fix its permissions or choose another folder",
            }.get(code or -1, "check the folder exists and is writable")
    what = cause.strerror if cause is not None and cause.strerror else f"{type(err).__name__}: {err}"
    return StorageError(f"{path}: cannot write ({what}); {hint}. Nothing was left at that path.")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name in ``path``'s folder to write to, renamed onto ``path`` when the block succeeds.

    When the block (or the rename) fails, the temporary file is removed and an ``OSError`` (disk full, read-only,
    ...) becomes a :class:`StorageError` naming ``path``: readers see the old file or the whole new one, never a
    partial one. The temporary name keeps the suffix (``.model.<random>.part.keras``), for writers that check it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".part{path.suffix}")
        os.close(fd)
    except OSError as err:
        raise _write_failed(path, err) from err
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        cause = _os_error(err)
        if isinstance(err, Exception) and cause is not None and cause.errno in _WRITE_ERRNOS:
            raise _write_failed(path, err) from err
        raise


def write_bytes(uri: str, data: bytes, s3: Any = None) -> None:
    """Write a file atomically (local: :func:`atomic_path`) or put an S3 object (retried through outages)."""
    loc = parse(uri)
    if not loc.is_s3:
        with atomic_path(loc.key) as tmp:
            tmp.write_bytes(data)
        return
    try:
        _retry(s3, lambda: s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=data))
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err


def upload_file(path: str | Path, uri: str, s3: Any) -> str:
    """Upload a local file (multipart above 8 MiB, retried by boto3); return its sha256."""
    from boto3.s3.transfer import TransferConfig

    loc = parse(uri)
    digest = sha256_file(path)
    try:
        _retry(s3, lambda: s3.upload_file(str(path), loc.bucket, loc.key, ExtraArgs={"Metadata": {"sha256": digest}},
                                          Config=TransferConfig(multipart_threshold=8 * 1024 * 1024)))
    except Exception as err:
        raise explain(err, loc, _endpoint(s3)) from err
    return digest


def download_file(uri: str, path: str | Path, s3: Any) -> Path:
    """Download an S3 object to a local file (atomically)."""
    loc = parse(uri)
    with atomic_path(path) as tmp:
        try:
            _retry(s3, lambda: s3.download_file(loc.bucket, loc.key, str(tmp)))
        except Exception as err:
            cause = _os_error(err)
            if cause is not None and cause.errno in _WRITE_ERRNOS:
                raise  # a local write error: atomic_path names the file
            raise explain(err, loc, _endpoint(s3)) from err
    return Path(path)


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
    """A time-limited HTTP link to an S3 object (for the Prefect UI); at most :data:`MAX_LINK_SECONDS`.

    Signed with the read-only links identity when ``SCENE_LINK_ACCESS_KEY_ID``/``SCENE_LINK_SECRET_ACCESS_KEY``
    are set (the local stack gives them to its workers), so a leaked link can read one object and write nothing.
    """
    if not 1 <= expires <= MAX_LINK_SECONDS:
        raise ValueError(f"presigned_url(expires={expires}): links may last 1..{MAX_LINK_SECONDS} seconds; "
                         "share the s3:// URI for longer-lived references")
    loc = parse(uri)
    key_id, secret = os.environ.get("SCENE_LINK_ACCESS_KEY_ID"), os.environ.get("SCENE_LINK_SECRET_ACCESS_KEY")
    if key_id and secret:
        import boto3.session

        s3 = boto3.session.Session().client(  # signing is local: no request is sent
            "s3", endpoint_url=s3.meta.endpoint_url, region_name=s3.meta.region_name, aws_access_key_id=key_id,
            aws_secret_access_key=secret, config=s3.meta.config)
    return s3.generate_presigned_url("get_object", Params={"Bucket": loc.bucket, "Key": loc.key}, ExpiresIn=expires)
