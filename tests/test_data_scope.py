"""The data a retrain/predict flow may read: only inside the configured data bucket and prefix."""

from __future__ import annotations

import pytest

from scene.data.scope import PREDICT_PREFIX, require_data_uri
from scene.settings import Settings

S = Settings(data_bucket="scene-data", data_prefix="datasets/")


@pytest.mark.parametrize("uri", ["s3://scene-data/datasets/intel/", "s3://scene-data/datasets/a/seg_train"])
def test_inside_the_data_prefix_is_accepted(uri: str) -> None:
    assert require_data_uri(uri, S) == uri


@pytest.mark.parametrize(("uri", "words"), [
    ("/etc/", "only from the data bucket"),
    ("file:///home/", "only from the data bucket"),
    ("s3://scene-artifacts/registry/", "not the data bucket"),
    ("s3://scene-data/incoming/x/", "outside the data prefix"),
    ("s3://scene-data/datasets-evil/x/", "outside the data prefix"),
    ("s3://scene-data/datasets/../registry/", "'..'"),
    ("s3://scene-data/datasets/a/../../x/", "'..'"),
    ("s3://scene-data/datasets//x/", "empty path segment"),
    ("s3://scene-data/", "outside the data prefix"),
])
def test_anything_else_is_refused_naming_the_allowed_place(uri: str, words: str) -> None:
    with pytest.raises(ValueError, match="s3://scene-data/datasets/") as err:
        require_data_uri(uri, S)
    assert words in str(err.value) and uri in str(err.value)


def test_predict_may_also_read_the_incoming_prefix() -> None:
    prefixes = (S.data_prefix, PREDICT_PREFIX)
    assert require_data_uri("s3://scene-data/incoming/", S, prefixes=prefixes)
    with pytest.raises(ValueError, match="outside the data prefix"):
        require_data_uri("s3://scene-data/models/", S, prefixes=prefixes)


def test_flows_check_their_data_first() -> None:
    """flows/retrain.py and flows/predict.py call the check before anything else reads data."""
    import inspect

    from flows import predict, retrain

    for fn in (retrain.retrain.fn, predict.predict.fn):
        src = inspect.getsource(fn)
        assert src.index("require_data_uri") < min(i for i in (src.find("read_"), src.find("resolve_model("),
                                                               src.find("_retrain_dataset(")) if i > 0)
