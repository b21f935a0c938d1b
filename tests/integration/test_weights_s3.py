"""Weights from S3 against the real local gateway: cached by URI + ETag, checked against Keras' hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scene.data import storage
from scene.model import backbones

pytestmark = pytest.mark.integration


def test_s3_weights_are_cached_by_uri_and_etag(s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    """Overwriting the object behind the same URI gives new weights, never the stale local copy."""
    uri = f"s3://{env['SCENE_ARTIFACT_BUCKET']}/test-weights/model.weights.h5"
    spec = backbones.get_spec("mobilenetv2")
    fingerprints = []
    for content in (b"first weights", b"second weights"):
        storage.write_bytes(uri, content, s3)
        w = backbones.resolve_weights(spec, uri, 64, s3=s3, local_cache=tmp_path)
        assert Path(w.path).read_bytes() == content and w.origin == uri
        fingerprints.append(w.fingerprint)
    assert fingerprints[0] != fingerprints[1]
    assert fingerprints[0] == storage.sha256_bytes(b"first weights")[:16]


def test_mirror_file_with_the_wrong_hash_is_not_used(s3: Any, env: dict[str, str], tmp_path: Path) -> None:
    """A mirror object that is not Keras' published file is refused and its local copy removed."""
    spec = backbones.get_spec("resnet50")
    mirror = f"s3://{env['SCENE_ARTIFACT_BUCKET']}/bad-mirror/"
    storage.write_bytes(mirror + spec.weights_file(150), b"a truncated download", s3)
    with pytest.raises(backbones.WeightsUnavailable, match="does not have Keras' hash"):
        backbones.resolve_weights(spec, "imagenet", 150, s3=s3, mirror=mirror, local_cache=tmp_path)
    assert not (tmp_path / spec.weights_file(150)).exists()
