"""Hostile names and links without a server: keys never escape a folder, links expire within the hour,
files are checked against their recorded hash."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from scene.data import storage
from scene.registry.integrity import IntegrityError, parse_version_uri, verify_file


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty name"),
        ("../x.jpg", "'.', '..' or empty"),
        ("a/../../x.jpg", "'.', '..' or empty"),
        ("a/./x.jpg", "'.', '..' or empty"),
        ("a//x.jpg", "'.', '..' or empty"),
        ("a/", "'.', '..' or empty"),
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/x", "absolute path"),
        ("a\\..\\x.jpg", "backslash"),
        ("a/x\n.jpg", "control character"),
        ("a/x\x00.jpg", "control character"),
    ],
)
def test_unsafe_names_are_refused(tmp_path: Path, name: str, problem: str) -> None:
    with pytest.raises(storage.StorageError, match=problem):
        storage.safe_join(tmp_path, name, "s3://b/p/" + name)


def test_safe_names_join_inside(tmp_path: Path) -> None:
    assert storage.safe_join(tmp_path, "a/b c/x+y.jpg") == tmp_path.resolve() / "a" / "b c" / "x+y.jpg"
    (tmp_path / "link").symlink_to(tmp_path.parent, target_is_directory=True)
    with pytest.raises(storage.StorageError, match="resolves outside"):
        storage.safe_join(tmp_path, "link/escaped.txt")


def test_presigned_links_expire_within_an_hour() -> None:
    from scene.settings import Settings

    client = storage.s3_client(Settings(s3_endpoint_url="http://127.0.0.1:9", aws_access_key_id="AKIAEXAMPLE",
                                        aws_secret_access_key="secret"))
    url = storage.presigned_url("s3://bucket/runs/x/report.html", client)  # signing is local: no request
    expires = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Expires"][0])
    assert 0 < expires <= 3600
    with pytest.raises(ValueError, match=r"1\.\.3600 seconds"):
        storage.presigned_url("s3://bucket/x", client, expires=7 * 24 * 3600)


def test_verify_file_checks_size_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(b"weights")
    digest = storage.sha256_file(path)
    verify_file(path, digest, 7)
    with pytest.raises(IntegrityError, match=r"model\.keras: 7 bytes, but 8 were recorded"):
        verify_file(path, digest, 8)
    with pytest.raises(IntegrityError, match=f"s3://b/v/model.keras: sha256 {digest} does not match"):
        verify_file(path, "0" * 64, what="s3://b/v/model.keras")
    with pytest.raises(IntegrityError, match="missing"):
        verify_file(tmp_path / "nope", digest)


def test_version_uri_is_parsed_strictly() -> None:
    assert parse_version_uri("s3://b/models/resnet50/resnet50-0123456789ab") == (
        "s3://b/models/resnet50/resnet50-0123456789ab/", "resnet50-0123456789ab", "0123456789ab")
    for bad in ("s3://b/models/resnet50/latest/", "/local/resnet50-0123456789ab/", "s3://b/x/resnet50-0123/"):
        with pytest.raises(IntegrityError, match="not a registered model version"):
            parse_version_uri(bad)
