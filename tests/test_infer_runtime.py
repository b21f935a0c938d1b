"""The inference runtime (scene.model.infer): the choice, OpenVINO's parity check against the Keras graph, the
stored export, and the runtime in the feature-cache namespace. Real OpenVINO, real Keras graphs, no mocks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from scene.model import infer
from scene.model.backbones import Preprocess, WeightsSource
from scene.model.pipeline import AugmentConfig

if infer.openvino_version() is None:  # imported through scene, without OpenVINO's telemetry
    pytest.skip("openvino is not installed", allow_module_level=True)


def _tiny(size: int = 24) -> tuple[keras.Model, keras.Model]:
    """A small extractor (raw pixels → 'tf' preprocessing → conv → pooled) and its graph without preprocessing."""
    keras.utils.set_random_seed(1)
    core_in = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(core_in)
    core = keras.Model(core_in, keras.layers.GlobalAveragePooling2D()(x), name="core")
    inp = keras.Input((size, size, 3))
    return keras.Model(inp, core(Preprocess("tf")(inp)), name="tiny_features"), core


def _pixels(n: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts as a new process would: nothing loaded, its own store."""
    monkeypatch.setattr(infer, "_LOADED", type(infer._LOADED)())
    monkeypatch.setattr(infer, "cache_root", lambda: tmp_path / "store")


def test_choice_from_the_environment() -> None:
    assert infer.requested({}) == "auto"
    assert infer.selected(env={infer.ENV: "tensorflow"}) == "tensorflow"
    assert infer.selected("float32", env={}) == "openvino"  # installed, CPU only, f32
    assert infer.selected("mixed_float16", env={}) == "tensorflow"  # auto keeps reduced precision on TensorFlow
    with pytest.raises(infer.RuntimeChoiceError, match=r"SCENE_INFERENCE_RUNTIME='onnx'.*auto, tensorflow, openvino"):
        infer.selected(env={infer.ENV: "onnx"})


def test_cache_namespace_changes_with_runtime_and_precision() -> None:
    from scene.train import features

    w = WeightsSource("none", None, "random", "none-seed0")
    ns = {(rt, p): features.namespace("mobilenetv2", w, 96, AugmentConfig(), 0, p,
                                      infer.cache_tag(p, {infer.ENV: rt}))
          for rt in ("tensorflow", "openvino") for p in ("float32", "mixed_float16")}
    assert len(set(ns.values())) == 4, ns
    assert f"-ov{infer.openvino_version()}-f32-" in ns["openvino", "float32"]
    assert "-tf-" in ns["tensorflow", "float32"]


def test_precision_choice_and_its_namespace(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    assert infer.requested_precision({}) == "f32"
    with pytest.raises(infer.RuntimeChoiceError, match=r"SCENE_INFERENCE_PRECISION='fp8'.*f32, bf16"):
        infer.requested_precision({infer.PRECISION_ENV: "fp8"})
    with pytest.raises(infer.RuntimeChoiceError, match="bf16 runs on OpenVINO but SCENE_INFERENCE_RUNTIME=tensorflow"):
        infer.selected(env={infer.ENV: "tensorflow", infer.PRECISION_ENV: "bf16"})
    bf16 = {infer.ENV: "auto", infer.PRECISION_ENV: "bf16"}
    assert infer.selected("mixed_bfloat16", env=bf16) == "openvino"  # asked of OpenVINO: not left to TensorFlow
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: True)
    assert infer.cache_tag(env=bf16) == f"ov{infer.openvino_version()}-bf16"
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: False)  # a CPU without BF16 runs f32, and the tag says so
    monkeypatch.setattr(infer, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="scene.model.infer"):
        assert infer.cache_tag(env=bf16) == f"ov{infer.openvino_version()}-f32"
    assert "no BF16 support" in caplog.text and "running at f32" in caplog.text


def test_bf16_computes_in_bf16_where_the_cpu_has_it_and_f32_where_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    """Asked for BF16, OpenVINO computes in BF16 on this CPU if it has BF16 (further from Keras than f32, within the
    BF16 check, which still refuses a graph without its preprocessing), else in f32 (as close as f32); either way
    every pass, even a small job under auto, runs on OpenVINO. Both branches are real: the CI machine decides which."""
    model, core = _tiny()
    sample = _pixels(8)
    keras_out = np.asarray(model(sample))
    monkeypatch.setenv(infer.PRECISION_ENV, "bf16")
    monkeypatch.setattr(infer, "cache_root", lambda: tmp_path)
    from scene.model import pipeline

    monkeypatch.setattr(pipeline, "predict_batches", lambda *a, **k: pytest.fail("ran on TensorFlow"))
    out = np.concatenate(list(infer.predict_batches(model, [sample[:5], sample[5:]], images=8)))
    diff = infer.relative_difference(keras_out, out)
    if not infer.cpu_has_bf16():
        assert infer.effective_precision() == "f32" and diff <= infer.TOLERANCE
        assert infer.cache_tag().endswith("-f32")
        return
    assert infer.effective_precision() == "bf16" and infer.cache_tag().endswith("-bf16")
    assert infer.TOLERANCE < diff <= infer.TOLERANCES["bf16"]
    key = infer.model_key(model, "bf16")
    assert key != infer.model_key(model, "f32")
    stored = json.loads((tmp_path / key / "parity.json").read_text())
    assert stored["ok"] and stored["precision"] == "bf16" and stored["tolerance"] == infer.TOLERANCES["bf16"]
    infer._LOADED.clear()  # as a new process with another store would
    broken, _ = infer.openvino_runner(model, sample, exporter=lambda m: infer.export(core), root=tmp_path / "b",
                                      precision="bf16")
    assert broken is None  # a graph without its preprocessing is off by far more than BF16's rounding


def test_openvino_runs_a_batch_in_slices_with_the_same_outputs(tmp_path: Path) -> None:
    model, _ = _tiny()
    sample = _pixels(3 * infer.SLICE + 3)
    runner, _ = infer.openvino_runner(model, sample, root=tmp_path)
    whole = infer.OpenVINOModel(runner.compiled, slice_size=len(sample))
    np.testing.assert_allclose(runner(sample), whole(sample), rtol=1e-6, atol=1e-6)
    assert runner(sample).shape == (len(sample), 8)


def test_parity_refuses_an_export_without_its_preprocessing(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    model, core = _tiny()
    sample = _pixels(8)
    with caplog.at_level(logging.WARNING, logger="scene.model.infer"):
        runner, reference = infer.openvino_runner(model, sample, exporter=lambda m: infer.export(core),
                                                  root=tmp_path)
    assert runner is None
    assert "refused" in caplog.text and "running it on TensorFlow" in caplog.text
    np.testing.assert_allclose(reference, np.asarray(model(sample)), rtol=1e-5, atol=1e-5)  # the Keras outputs
    stored = json.loads((tmp_path / infer.model_key(model) / "parity.json").read_text())
    assert stored["ok"] is False and stored["rel_diff"] > infer.TOLERANCE and stored["images"] == 8

    # a later process reads the refusal and never converts again
    infer._LOADED.clear()
    calls = []
    runner, _ = infer.openvino_runner(model, sample, exporter=lambda m: calls.append(m), root=tmp_path)
    assert runner is None and calls == []


def test_export_checked_stored_and_reused(tmp_path: Path) -> None:
    import sys

    model, _ = _tiny()
    sample = _pixels(8)
    runner, reference = infer.openvino_runner(model, sample, root=tmp_path)
    assert runner is not None and reference is not None
    key = infer.model_key(model)
    stored = json.loads((tmp_path / key / "parity.json").read_text())
    assert stored["ok"] is True and stored["rel_diff"] <= infer.TOLERANCE
    assert infer.relative_difference(np.asarray(model(sample)), runner(sample)) <= infer.TOLERANCE

    infer._LOADED.clear()  # a new process: the stored model, no conversion, no check
    again, ref = infer.openvino_runner(model, sample, exporter=lambda m: pytest.fail("converted again"),
                                       root=tmp_path)
    assert again is not None and ref is None
    assert "openvino_telemetry" not in sys.modules  # OpenVINO's converter sent no usage events
    np.testing.assert_array_equal(again(sample), runner(sample))

    model.layers[-1].layers[1].kernel.assign(model.layers[-1].layers[1].kernel * 2)  # other weights: another key
    assert infer.model_key(model) != key and not (tmp_path / infer.model_key(model)).exists()


def test_predict_batches_same_outputs_on_both_runtimes() -> None:
    model, _ = _tiny()
    batches = [_pixels(5), _pixels(3)]  # a short last batch too
    tf_out = np.concatenate(list(infer.predict_batches(model, batches, runtime="tensorflow")))
    for _ in range(2):  # the first pass checks the export on batch one, the second runs it from memory
        ov_out = np.concatenate(list(infer.predict_batches(model, batches, runtime="openvino")))
        assert infer.relative_difference(tf_out, ov_out) <= infer.TOLERANCE


def test_extracted_features_equal_on_openvino_and_tensorflow(intel_dir: Path, mobilenet_weights: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real photos and weights: scene's extraction on OpenVINO stores the TensorFlow features (within 1e-4), under
    another namespace."""
    from scene.data.storage import sha256_file
    from scene.model.backbones import content_hash
    from scene.train import features

    w = WeightsSource("file", str(mobilenet_weights), str(mobilenet_weights), content_hash(mobilenet_weights)[:16])
    paths = [p for c in ("forest", "street") for p in sorted((intel_dir / c).glob("*.jpg"))[:5]]
    rows = pd.DataFrame({"key": [str(p) for p in paths], "sha256": [sha256_file(p) for p in paths]})
    out = {}
    for rt in ("tensorflow", "openvino"):
        monkeypatch.setenv(infer.ENV, rt)
        ns = features.namespace("mobilenetv2", w, 96, AugmentConfig(), 0)
        cache = features.FeatureCache(str(tmp_path / "cache"), ns)
        features.extract(rows, [0, features.MIRROR_VIEW], backbone="mobilenetv2", weights=w, size=96, cache=cache,
                         batch_size=4)
        out[rt] = features.gather(features.FeatureCache(str(tmp_path / "cache"), ns), rows.assign(label_index=0),
                                  [0, features.MIRROR_VIEW])[0]
        out[rt + " ns"] = ns
    assert out["tensorflow ns"] != out["openvino ns"]
    assert infer.relative_difference(out["tensorflow"], out["openvino"]) <= infer.TOLERANCE
    assert list((tmp_path / "store").glob("*/model.xml"))  # the export was stored


def test_auto_keeps_small_jobs_on_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under auto, scoring fewer than CONVERT_MIN_IMAGES with a model not yet exported converts nothing."""
    monkeypatch.setenv(infer.ENV, "auto")
    model, _ = _tiny()
    list(infer.predict_batches(model, [_pixels(4)], images=4))
    assert not (tmp_path / "store").exists()
    list(infer.predict_batches(model, [_pixels(4)], images=infer.CONVERT_MIN_IMAGES))
    assert list((tmp_path / "store").glob("*/model.xml"))
    from scene.model import pipeline

    monkeypatch.setattr(pipeline, "predict_batches", lambda *a, **k: pytest.fail("ran on TensorFlow"))
    list(infer.predict_batches(model, [_pixels(4)], images=4))  # exported in this process: OpenVINO runs it
