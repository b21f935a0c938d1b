"""The fast input path (issue 8): one image loader for every use, decoding ahead of the model, one trace per
batch shape, the head trained from in-memory arrays, and TensorFlow's threads sized by core count."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from scene.data import images
from scene.model import runtime
from scene.model.network import build_head
from scene.model.pipeline import decode_workers, load_pixels, pixel_batches, predict_batches, resize_pad


def _jpeg(path: Path, w: int, h: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_resize_pad_is_the_identity_at_the_target_size() -> None:
    """The reason load_pixels may skip resampling an image that already has the model's size."""
    rng = np.random.default_rng(0)
    for size in (48, 150, 224):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        assert np.array_equal(np.asarray(resize_pad(img, size)), img.astype(np.float32)), size


def test_load_pixels_equals_resize_pad_of_the_decoded_image(tmp_path: Path) -> None:
    for i, (w, h) in enumerate([(150, 150), (120, 90), (64, 200)]):
        path = _jpeg(tmp_path / f"{i}.jpg", w, h, i)
        want = np.asarray(resize_pad(images.decode_rgb(path.read_bytes()), 150))
        got = load_pixels(str(path), 150)
        assert got.dtype == np.float32 and got.shape == (150, 150, 3)
        np.testing.assert_allclose(got, want, atol=1e-3, err_msg=f"{w}x{h}")


def test_pixel_batches_keep_order_and_report_unreadable_images(tmp_path: Path) -> None:
    keys = [str(_jpeg(tmp_path / f"{i}.jpg", 40 + i, 40, i)) for i in range(7)]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    tiny = _jpeg(tmp_path / "tiny.jpg", 8, 8, 9)
    keys[2], keys[5] = str(tmp_path / "broken.jpg"), str(tiny)
    errors: dict[str, str] = {}
    batches = list(pixel_batches(keys, 48, batch_size=3, errors=errors, workers=2))
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = np.concatenate(batches)
    for i in (0, 1, 3, 4, 6):
        np.testing.assert_allclose(flat[i], load_pixels(keys[i], 48), atol=1e-3)
    assert set(errors) == {keys[2], keys[5]}
    assert "not a readable image" in errors[keys[2]] and "smaller than the 32-pixel minimum" in errors[keys[5]]
    assert not flat[2].any() and not flat[5].any()
    with pytest.raises(images.ImageProblem, match="not a readable image"):
        list(pixel_batches(keys, 48, batch_size=3))


class _TraceCounter(keras.layers.Layer):
    """Counts how often Keras traces the model (``call`` runs in Python only while tracing)."""

    traces = 0

    def call(self, x):
        type(self).traces += 1
        return x * 2.0


class _RowCounter(keras.layers.Layer):
    """Counts the rows the compiled model computes (a TensorFlow variable, updated inside the graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float32")

    def call(self, x):
        self.rows.assign_add(keras.ops.cast(keras.ops.shape(x)[0], "float32"))
        return x


def test_predict_batches_run_a_short_last_batch_unpadded_and_trace_once() -> None:
    inp = keras.Input((4,))
    counter = _RowCounter()
    model = keras.Model(inp, counter(_TraceCounter()(inp)))
    _TraceCounter.traces = 0  # building the functional model called it once
    x = np.arange(13 * 4, dtype=np.float32).reshape(13, 4)
    out = list(predict_batches(model, [x[:5], x[5:10], x[10:]]))
    assert [len(o) for o in out] == [5, 5, 3]
    np.testing.assert_allclose(np.concatenate(out), x * 2.0)
    assert _TraceCounter.traces == 1  # the 3-image batch did not trace again (Keras' predict_on_batch would)
    assert float(counter.rows.numpy()) == 13  # and was not padded: no row computed for nothing
    list(predict_batches(model, [x[:7]]))  # a new batch size, later, reuses the same trace
    assert _TraceCounter.traces == 1


def test_fit_head_learns_from_in_memory_arrays_and_reports_speed() -> None:
    from scene.train.fit import TrainConfig, fit_head

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (6, 32))
    y = rng.integers(0, 6, 1200)
    x = (centers[y] + rng.normal(0, 1, (1200, 32))).astype(np.float32)
    cfg = TrainConfig(backbone="mobilenetv2", weights="none", epochs=4, patience=2, seed=1)
    keras.utils.set_random_seed(1)
    head = build_head(32, 6)
    hist = fit_head(head, (x[:1000], y[:1000]), (x[1000:], y[1000:]), cfg)
    assert list(hist["epoch"]) == [1, 2, 3, 4] and hist["val_accuracy"].iloc[-1] > 0.9
    assert hist.attrs["epochs_per_s"] > 0 and hist.attrs["seconds"] > 0


def test_thread_plan_by_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCENE_TF_INTRA_THREADS", raising=False)
    monkeypatch.delenv("SCENE_TF_INTER_THREADS", raising=False)
    monkeypatch.delenv("SCENE_S3_READERS", raising=False)
    assert runtime.thread_plan(2) == runtime.ThreadPlan(intra_op=2, inter_op=1, decode=2, s3_readers=16)
    assert runtime.thread_plan(16) == runtime.ThreadPlan(intra_op=16, inter_op=2, decode=8, s3_readers=16)
    monkeypatch.setenv("SCENE_TF_INTER_THREADS", "3")
    monkeypatch.setenv("SCENE_S3_READERS", "12")
    assert (runtime.thread_plan(2).inter_op, runtime.thread_plan(2).s3_readers) == (3, 12)
    assert decode_workers(["s3://b/k.jpg"]) == 12 and decode_workers(["/tmp/k.jpg"]) == runtime.thread_plan().decode


def test_predict_folder_reads_each_image_once_and_lists_bad_ones(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from scene.data import storage
    from scene.model.parts import predict_folder

    for i in range(5):
        _jpeg(tmp_path / f"{i}.jpg", 48, 48, i)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    reads: list[str] = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda key, s3=None: reads.append(key) or real(key, s3))
    inp = keras.Input((48, 48, 3))
    model = keras.Model(inp, build_head(48 * 48 * 3, 3)(keras.layers.Flatten()(inp / 255.0)))
    out = tmp_path.parent / f"{tmp_path.name}-out.csv"
    n, bad = predict_folder(model, str(tmp_path), str(out), ["a", "b", "c"])
    assert (n, bad) == (5, 1)
    assert sorted(reads) == sorted({*reads}) and len(reads) == 6
    text = io.StringIO(out.read_text()).read()
    assert "broken.jpg" in text and "not a readable image" in text
