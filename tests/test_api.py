"""The Python API (scene.train / evaluate / predict): a notebook's way in, on real folders, offline "imagenet".

One tiny dataset (two hue classes, ``cats`` and ``dogs``, 32 px, 10 images each, with macOS/Windows litter) is
trained once per module (TensorFlow runtime) with ``weights="imagenet"`` resolved from a temporary Keras cache
(:mod:`tests.support.weights`); the other tests reuse it and its feature cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import scene
from scene.metadata import CLASS_NAMES
from scene.settings import Settings
from tests.support.hues import draw_hues
from tests.support.weights import use_imagenet_cache

SIZE = 32
LITTER = ["__MACOSX/cats/._c00.jpg", "__MACOSX/._cats", ".DS_Store", "cats/.DS_Store", "dogs/._d00.jpg",
          "Thumbs.db", "dogs/Thumbs.db", "desktop.ini"]


def _cats_and_dogs(root: Path, per_class: int, seed: int = 3) -> Path:
    """Two hue classes named as a user's (``cats``, ``dogs``: not Intel classes), plus the :data:`LITTER` files."""
    draw_hues(root, 0, size=SIZE, per_class=per_class, seed=seed)
    for cls in CLASS_NAMES[2:]:
        shutil.rmtree(root / cls)
    for cls, mine in zip(CLASS_NAMES[:2], ("cats", "dogs"), strict=True):
        (root / cls).rename(root / mine)
    for rel in LITTER:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\x00\x05\x16\x07 resource fork / desktop metadata")
    return root


def _offline(mp: pytest.MonkeyPatch) -> None:
    """No network for Keras downloads (a proxy that refuses connections), TensorFlow runtime for 20 images."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        mp.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        mp.delenv(name, raising=False)
    mp.setenv("SCENE_INFERENCE_RUNTIME", "tensorflow")  # an OpenVINO export would cost more than it saves here


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``scene.train`` of cats/dogs with default weights ("imagenet", from the temporary Keras cache), once."""
    tmp = tmp_path_factory.mktemp("api")
    data = _cats_and_dogs(tmp / "photos", 10)
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp)
        mp.setenv("SCENE_EXPORT", "openvino")  # what users get (the suite turns it off elsewhere)
        weights = use_imagenet_cache(tmp, mp, SIZE)
        run = scene.train(str(data), out=tmp / "runs", backbones=["mobilenetv2"], image_size=SIZE, epochs=20,
                          views=0, cache=tmp / "features", settings=Settings())
        yield {"tmp": tmp, "data": data, "run": run, "weights": weights, "mp": mp}


def test_import_scene_is_cheap_and_changes_nothing_global() -> None:
    """``import scene`` loads no TensorFlow (nor pandas, numpy, pydantic) and leaves the environment alone; importing
    the pipeline leaves TensorFlow's thread settings alone; the first model built applies the thread plan and the BFC
    allocator: a large tensor computed again reuses memory instead of faulting in fresh pages (TensorFlow's default
    allocator page-faults ~12,500 times per 50 MB output, every time)."""
    code = """if True:
        import json, os, sys
        env = dict(os.environ)
        import scene
        heavy = sorted(m for m in ("tensorflow", "keras", "pandas", "numpy", "pydantic", "boto3") if m in sys.modules)
        same_env = dict(os.environ) == env
        import scene.model.pipeline, tensorflow as tf
        t = tf.config.threading
        before = [t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads()]
        from scene.model import runtime
        from scene.model.network import build_head
        build_head(8, 3)
        after = [t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads()]
        plan = runtime.thread_plan()
        import resource
        x = tf.ones((32, 112, 112, 32))
        conv = tf.function(lambda x: tf.nn.relu(x * 2.0))
        conv(x)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            conv(x).numpy()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps([heavy, same_env, before, after, [plan.intra_op, plan.inter_op],
                          os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"), faults]))
    """
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}  # scene sets it, not this test
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean)
    heavy, same_env, before, after, want, bfc, faults = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [] and same_env
    assert before == [0, 0]  # TensorFlow's own defaults: importing the pipeline changed nothing
    assert after == want
    assert bfc == "true" and faults < 10_000, faults  # 5 outputs of 51 MB: ~60,000 faults without BFC


def test_litter_is_listed_never_a_class_and_never_fatal(tmp_path: Path) -> None:
    """A folder zipped on a Mac / copied from Windows: the litter is skipped and listed as "os litter", the
    classes come from the real folders, and validation passes (the litter is not counted as rejected images)."""
    from scene.api import check_data, load_data
    from scene.data.dataset import OS_LITTER

    data = _cats_and_dogs(tmp_path / "d", 6)
    ds = load_data(data, settings=Settings())
    assert ds.class_names == ("cats", "dogs")
    listed = {Path(k).relative_to(data).as_posix(): p for k, p in zip(ds.rejected["key"], ds.rejected["problem"],
                                                                         strict=True)}
    assert listed == dict.fromkeys(LITTER, OS_LITTER)
    assert len(ds.manifest) == 12
    assert check_data(ds).success  # 8 litter files beside 12 images: no rejected-fraction failure


@pytest.mark.parametrize("key", ["s3://b/data/__MACOSX/sea/._x.jpg", "s3://b/data/seg_train/seg_train/sea/._x.jpg",
                                 "s3://b/data/sea/.DS_Store", "s3://b/data/Thumbs.db", "s3://b/data/sea/DESKTOP.INI"])
def test_litter_keys_in_s3_are_litter(key: str) -> None:
    from scene.data.dataset import OS_LITTER, _classify

    f = _classify("s3://b/data/", key, 10, "pool")
    assert (f.problem, f.label) == (OS_LITTER, None)


def test_train_on_folder_classes_with_default_imagenet_weights(trained: dict[str, Any]) -> None:
    run = trained["run"]
    assert run.dataset.class_names == ("cats", "dogs")  # not the Intel six: the folders, sorted
    assert list(run.table["backbone"]) == ["mobilenetv2"] and run.table["status"][0] == "ok"
    best = run.best
    assert best.backbone == "mobilenetv2" and best.weights == "imagenet" and not best.random_init
    assert best.weights_origin == f"keras cache {trained['weights']}"  # offline, the user's code path
    assert json.loads(Path(best.model_path).with_name("config.json").read_text())["class_names"] == ["cats", "dogs"]
    assert (run.out_dir / "comparison.csv").is_file()
    assert set(run.dataset.rejected["problem"]) == {"os litter"}


def test_evaluate_and_predict_a_trained_model(trained: dict[str, Any], tmp_path: Path) -> None:
    model, data = trained["run"].best.model_path, trained["data"]
    scores = scene.evaluate(model, data, out=tmp_path / "eval", settings=Settings())
    assert scores["n"] == 20 and set(scores["per_class"]) >= {"cats", "dogs"}
    assert 0.0 <= scores["accuracy"] <= 1.0 and len(scores["confusion"]) == 2
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["accuracy"] == scores["accuracy"]
    preds = scene.predict(model, data / "dogs", settings=Settings())
    assert list(preds.columns) == ["image", "label", "confidence", "p_cats", "p_dogs", "error"]
    assert len(preds) == 12 and (preds["error"] != "").sum() == 2  # 10 images; ._d00.jpg and Thumbs.db listed
    ok = preds[preds["error"] == ""]
    assert set(ok["label"]) <= {"cats", "dogs"}
    assert np.allclose(ok["p_cats"] + ok["p_dogs"], 1.0, atol=1e-5)


def test_the_trained_folder_carries_an_exported_model_that_predicts_as_model_keras(trained: dict[str, Any],
                                                                                      tmp_path: Path) -> None:
    """Issue 23: beside model.keras, openvino/model.xml + model.bin + export.json (the source's SHA-256, classes,
    parity within 1e-4 on real images); scoring the run's own images with the IR gives model.keras' class on every
    image (agreement >= 99.9%), through scene.evaluate and scene.predict alike."""
    from scene.data import storage
    from scene.model import infer

    model = Path(trained["run"].best.model_path)
    ir = model.with_name("openvino") / "model.xml"
    meta = json.loads(ir.with_name("export.json").read_text())
    assert ir.is_file() and ir.with_name("model.bin").is_file()
    assert meta["source_sha256"] == storage.sha256_file(model) and meta["class_names"] == ["cats", "dogs"]
    assert meta["parity"]["ok"] and meta["parity"]["rel_diff"] <= infer.TOLERANCE and meta["parity"]["images"] > 0
    data = trained["data"]
    keras_scores = scene.evaluate(model, data, settings=Settings())  # TensorFlow (the fixture's runtime)
    ir_scores = scene.evaluate(ir, data, settings=Settings())
    assert ir_scores["n"] == keras_scores["n"] == 20
    assert ir_scores["confusion"] == keras_scores["confusion"]
    by_keras, by_ir = (scene.predict(m, data, settings=Settings()) for m in (model, ir))
    ok = by_keras["error"] == ""
    assert ok.sum() == 20 and list(by_ir["image"]) == list(by_keras["image"])
    assert (by_ir["label"][ok] == by_keras["label"][ok]).mean() >= 0.999
    assert np.allclose(by_ir["p_cats"][ok], by_keras["p_cats"][ok], atol=1e-4)


def test_scene_export_none_writes_no_export_and_a_wrong_value_is_named(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    from scene.model import export

    monkeypatch.setenv("SCENE_EXPORT", "none")
    assert export.write(tmp_path / "model.keras", tmp_path, np.zeros((1, 8, 8, 3), np.float32), ["a"]) is None
    assert not (tmp_path / "openvino").exists()
    monkeypatch.setenv("SCENE_EXPORT", "onnx")
    with pytest.raises(ValueError, match=r"SCENE_EXPORT='onnx'.*openvino, none"):
        export.wanted()


def test_a_failing_backbone_raises_naming_it_with_what_finished(trained: dict[str, Any]) -> None:
    """resnet50's ImageNet weights are nowhere offline (not in the Keras cache, no mirror, no network); mobilenetv2,
    after it, still trains; then TrainingError names resnet50 and the cause; .results holds both; error.txt and the
    comparison are written; the error says how to provide the weights."""
    tmp = trained["tmp"]
    out = tmp / "runs-failing"
    with pytest.raises(scene.TrainingError, match=r"^resnet50 failed: WeightsUnavailable: ImageNet weights for "
                                                  r"resnet50 are unavailable") as info:
        scene.train(trained["data"], out=out, backbones="resnet50,mobilenetv2", image_size=SIZE, epochs=1, views=0,
                    cache=tmp / "features", settings=Settings())
    err = info.value
    assert isinstance(err, scene.SceneError) and isinstance(err.__cause__, scene.WeightsUnavailable)
    assert "scene weights mirror" in str(err)  # the ways to provide the weights
    assert [(r.backbone, r.status != "failed") for r in err.results] == [("resnet50", False), ("mobilenetv2", True)]
    assert (out / "resnet50" / "error.txt").is_file() and (out / "comparison.csv").is_file()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"backbones": ["nope"]}, scene.ParamsError, r"backbone='nope' is not in the registry"),
    ({"backbones": ["mobilenetv2"], "epochs": 0}, scene.ParamsError, r"epochs"),
    ({"backbones": ["mobilenetv2"], "classes": ["cats"]}, scene.DatasetError, r"unknown class folders \['dogs'\]"),
])
def test_bad_input_raises_a_scene_error_before_training(tmp_path: Path, trained: dict[str, Any],
                                                        kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        scene.train(trained["data"], out=tmp_path / "out", settings=Settings(), cache=tmp_path / "c", **kwargs)
    assert not (tmp_path / "out").exists()
