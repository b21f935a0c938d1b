"""Training phases on tiny generated images: cached and online strategies, fine-tuning, the feature cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from scene.data.dataset import build_dataset
from scene.data.synth import make_synthetic
from scene.model.network import backbone_of, build_head, load, unfreeze_top
from scene.model.pipeline import image_dataset
from scene.model.predict import predict
from scene.train import features
from scene.train.experiment import RANDOM_INIT_WARNING
from scene.train.fit import TrainConfig, fit, precision_policy, predict_cached
from scene.train.stages import train_one

SMALL = {"backbone": "mobilenetv2", "weights": "none", "image_size": 48, "epochs": 3, "views": 1, "patience": 2}


@pytest.fixture(scope="module")
def ds(synth_dir: Path):
    return build_dataset(str(synth_dir))


def test_pipeline_feeds_raw_0_255_pixels(ds) -> None:
    x, y = next(iter(image_dataset(ds.manifest, 48, num_classes=6, batch_size=16)))
    assert x.shape == (16, 48, 48, 3) and y.shape == (16, 6)
    assert float(np.max(x)) > 100 and float(np.min(x)) >= 0


def test_resize_keeps_aspect_and_zero_pads(tmp_path: Path) -> None:
    from PIL import Image

    from scene.model.pipeline import resize_pad

    img = np.asarray(Image.new("RGB", (100, 50), (255, 255, 255)))
    out = np.asarray(resize_pad(img, 40))
    assert out.shape == (40, 40, 3)
    assert out[0, 20].max() == 0 and out[20, 20].min() > 250  # black bars top/bottom, image in the middle


def test_cached_run_writes_every_artifact(ds, tmp_path: Path) -> None:
    r = train_one(ds, TrainConfig(**SMALL), tmp_path / "mobilenetv2", cache_root=str(tmp_path / "cache"),
                  bootstrap=50)
    assert r.status in ("ok", "collapsed"), r.error
    out = tmp_path / "mobilenetv2"
    for name in ("model.keras", "metrics.json", "history.csv", "config.json", "report.html", "model_card.md",
                 "test_predictions.csv",
                 "learning_curves.png", "confusion_matrix.png", "roc.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        for key in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "f1_macro",
                    "auc_ovr_weighted", "collapsed", "per_class"):
            assert key in metrics[split], (split, key)
    assert len(metrics["test"]["ci"]["f1_weighted"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == list(ds.class_names) and config["data_fingerprint"] == ds.fingerprint
    assert config["config"]["backbone"] == "mobilenetv2"
    assert RANDOM_INIT_WARNING in (out / "model_card.md").read_text()
    assert r.features_computed == len(ds.split("train")) * 2 + len(ds.manifest) - len(ds.split("train"))


def test_cached_head_predictions_equal_the_full_model(ds, tmp_path: Path) -> None:
    cfg = TrainConfig(**SMALL)
    fitted = fit(ds, cfg, tmp_path / "m", cache_root=str(tmp_path / "cache"))
    fast = predict_cached(ds, cfg, fitted, str(tmp_path / "cache"), "val")
    model = load(str(fitted.model_path))  # the saved model, reloaded: preprocessing inside
    full = predict(model, ds.split("val"), 48)
    np.testing.assert_allclose(fast.probs, full.probs, atol=1e-4)


def test_feature_cache_computes_only_new_images(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "d", 6, size=40, seed=8)
    cfg = TrainConfig(**SMALL)
    from scene.model import backbones
    from scene.train.fit import extract_features

    w = backbones.resolve_weights(backbones.get_spec("mobilenetv2"), "none", 48)
    first = extract_features(build_dataset(str(root)), cfg, w, str(tmp_path / "cache"))
    assert first.computed == first.requested > 0
    again = extract_features(build_dataset(str(root)), cfg, w, str(tmp_path / "cache"))
    assert again.computed == 0 and again.cached == again.requested
    for c in ("sea", "forest"):  # one new image in two classes
        src = next((tmp_path / "d" / c).iterdir())
        img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(src))
        __import__("PIL.Image", fromlist=["Image"]).fromarray(255 - img).save(root / c / "new.png")
    grown = build_dataset(str(root))
    third = extract_features(grown, cfg, w, str(tmp_path / "cache"))
    new = grown.manifest[grown.manifest["key"].str.endswith("new.png")]
    assert third.computed == sum(2 if s == "train" else 1 for s in new["split"])


def test_feature_cache_shards_are_content_addressed(tmp_path: Path) -> None:
    cache = features.FeatureCache(str(tmp_path), "ns")
    a = cache.put(["x:0", "y:0"], np.ones((2, 3)))
    b = cache.put(["x:0", "y:0"], np.ones((2, 3)))
    assert a == b and len(a) == 1 and len(list((tmp_path / "ns").rglob("*.npz"))) == 1
    fresh = features.FeatureCache(str(tmp_path), "ns")
    assert fresh.missing(["x:0", "z:0"]) == ["z:0"]
    np.testing.assert_array_equal(fresh.get(["y:0"]), np.ones((1, 3)))


def test_chunks_are_whole_partitions_and_a_reader_loads_only_its_own(tmp_path: Path) -> None:
    import hashlib

    rows = pd.DataFrame({"sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)]})
    parts = features.chunks(rows, 3)
    assert sorted(i for c in parts for i in c.index) == list(rows.index)  # every image in exactly one chunk
    owned = [{features.partition(s) for s in c["sha256"]} for c in parts]
    assert all(not owned[i] & owned[j] for i in range(3) for j in range(i + 1, 3)) and set.union(*owned) == set(
        features.PARTITIONS)
    for bad in (0, 17):
        with pytest.raises(ValueError, match=rf"extract_chunks={bad} is invalid; pass 1\.\.16"):
            features.chunks(rows, bad)
    keys = [features.entry_key(s, 0) for s in rows["sha256"]]
    features.FeatureCache(str(tmp_path), "ns").put(keys, np.arange(600, dtype=np.float32).reshape(200, 3))
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == sorted(features.PARTITIONS)
    reader = features.FeatureCache(str(tmp_path), "ns")
    mine = [features.entry_key(s, 0) for s in parts[2]["sha256"]]
    np.testing.assert_array_equal(reader.get(mine), np.arange(600).reshape(200, 3)[parts[2].index])
    assert sorted(reader.loaded) == sorted(owned[2])  # the other chunks' partitions are never read


def test_online_with_finetuning_keeps_batchnorm_frozen(ds, tmp_path: Path) -> None:
    cfg = TrainConfig(**{**SMALL, "strategy": "online", "epochs": 2, "finetune_layers": 6, "finetune_epochs": 1})
    fitted = fit(ds, cfg, tmp_path / "online")
    assert fitted.extract is None
    assert list(fitted.history["phase"].unique()) == ["head", "finetune"]
    model = load(str(fitted.model_path))
    assert predict(model, ds.split("test"), 48).probs.shape == (len(ds.split("test")), 6)


@pytest.mark.parametrize("ship_mirror", [True, False], ids=["mirror-average", "plain-path"])
def test_block_finetuning_ships_the_tuned_network_and_scores_that_file(ds, tmp_path: Path, ship_mirror: bool) -> None:
    """The fine-tuning stage's model.keras is the tuned network (its top blocks and head moved, everything below and
    every BatchNorm exactly the frozen model's), and the run's test metrics are that saved file's predictions; with
    ``finetune_mirror`` False the file is the tuned plain path, with no mirror branch."""
    import pandas as pd
    from sklearn.metrics import accuracy_score, roc_auc_score

    from scene.model.network import backbone_blocks

    cfg = TrainConfig(**{**SMALL, "mirror": True, "finetune_blocks": 2, "finetune_epochs": 2, "finetune_lr": 1e-3,
                         "finetune_warmup": 0.5, "finetune_mirror": ship_mirror})
    out = tmp_path / "mobilenetv2"
    r = train_one(ds, cfg, out, cache_root=str(tmp_path / "cache"), bootstrap=0)
    assert r.status in ("ok", "collapsed"), r.error
    assert r.model_path == str(out / "model.keras") and (out / "frozen.keras").exists()
    history = pd.read_csv(out / "history.csv")
    assert list(history["phase"].unique()) == ["head", "finetune"]
    frozen, tuned = load(str(out / "frozen.keras")), load(str(out / "model.keras"))
    blocks = backbone_blocks(backbone_of(tuned))
    top = {layer.name for block in blocks[-2:] for layer in block}
    moved, kept = [], []
    for layer in backbone_of(tuned).layers:
        if not layer.weights:
            continue
        same = all(np.array_equal(a, b) for a, b in
                   zip(layer.get_weights(), backbone_of(frozen).get_layer(layer.name).get_weights(), strict=True))
        (kept if same else moved).append(layer.name)
        if isinstance(layer, keras.layers.BatchNormalization) or layer.name not in top:
            assert same, f"{layer.name} changed: only the top 2 blocks' non-BatchNorm layers may train"
    assert moved and set(moved) <= top, moved
    assert not all(np.array_equal(a, b) for a, b in zip(tuned.get_layer("head").get_weights(),
                                                         frozen.get_layer("head").get_weights(), strict=True))
    assert ("mirror" in [layer.name for layer in tuned.layers]) is ship_mirror  # averages over image and mirror?
    assert "mirror" in [layer.name for layer in frozen.layers]  # the frozen phase always ships the average
    test = ds.split("test")
    shipped, before = predict(tuned, test, 48).probs, predict(frozen, test, 48).probs
    assert not np.allclose(shipped, before)
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    y = test["label_index"].to_numpy()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, shipped.argmax(1)))
    assert metrics["auc_ovr_weighted"] == pytest.approx(roc_auc_score(y, shipped, multi_class="ovr",
                                                                      average="weighted"), abs=1e-6)
    csv = pd.read_csv(out / "test_predictions.csv")
    assert list(csv["y_pred"]) == list(shipped.argmax(1))


def test_weight_averaging_ships_and_validates_the_average(ds, tmp_path: Path) -> None:
    """``finetune_ema``: the saved model holds the moving average of the weights, not the last step's: at a momentum
    near 1 the average stays at the first step's weights (zero learning rate under the warm-up), so it barely leaves
    the frozen model while the raw weights move. The epoch kept is the one whose averaged weights validated best:
    the saved file's validation loss is the history's lowest (with and without averaging)."""
    import dataclasses

    from scene.train.fit import finetune, fit_frozen, weights_for

    base = TrainConfig(**{**SMALL, "finetune_blocks": 2, "finetune_epochs": 3, "finetune_lr": 1e-3, "patience": 5})
    frozen = fit_frozen(ds, base, tmp_path / "frozen", weights_for(base), cache_root=str(tmp_path / "cache"))
    start = load(str(frozen.model_path)).get_weights()
    val = image_dataset(ds.split("val"), 48, num_classes=len(ds.class_names), batch_size=base.batch_size)
    moved = {}
    for ema in (0.0, 0.9999):
        run = tmp_path / f"ema{ema}"
        run.mkdir()
        shutil.copy(frozen.model_path, run / "frozen.keras")
        tuned = finetune(ds, dataclasses.replace(base, finetune_ema=ema),
                         dataclasses.replace(frozen, model_path=run / "frozen.keras"))
        model = load(str(tuned.model_path))
        moved[ema] = sum(float(np.abs(a - b).sum()) for a, b in zip(model.get_weights(), start, strict=True))
        model.compile(loss="categorical_crossentropy")
        kept = tuned.history.loc[tuned.history["phase"] == "finetune", "val_loss"].min()
        assert model.evaluate(val, verbose=0) == pytest.approx(kept, rel=1e-4), ema
    assert moved[0.0] > 0 and moved[0.9999] < 0.05 * moved[0.0], moved
    with pytest.raises(ValueError, match=r"finetune_ema=1\.0 is invalid"):
        TrainConfig(**{**SMALL, "finetune_ema": 1.0})


def test_backbone_blocks_follow_keras_block_names() -> None:
    from scene.model import backbones
    from scene.model.network import assemble, backbone_blocks, unfreeze_blocks

    w = backbones.resolve_weights(backbones.get_spec("mobilenetv2"), "none", 32)
    model = assemble("mobilenetv2", 32, w, build_head(1280, 6))
    blocks = backbone_blocks(backbone_of(model))
    top = [layer.name for layer in blocks[-1]]
    assert top[0].startswith("block_16_") and "Conv_1" in top and "out_relu" in top
    assert unfreeze_blocks(model, 2) == ["block_15", "block_16"]
    trainable = {layer.name for layer in backbone_of(model).layers if layer.trainable}
    assert "block_15_expand" in trainable and "Conv_1" in trainable and "block_14_expand" not in trainable
    assert not any(isinstance(backbone_of(model).get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    with pytest.raises(ValueError, match="has 16 blocks"):
        unfreeze_blocks(model, 99)


def test_unfreeze_top_never_trains_batchnorm() -> None:
    from scene.model import backbones
    from scene.model.network import assemble

    w = backbones.resolve_weights(backbones.get_spec("mobilenetv2"), "none", 32)
    model = assemble("mobilenetv2", 32, w, build_head(1280, 6))
    n = unfreeze_top(model, 20)
    bb = backbone_of(model)
    top = bb.layers[-20:]
    assert n > 0 and all(not layer.trainable for layer in bb.layers[:-20])
    assert all(not layer.trainable for layer in top if isinstance(layer, keras.layers.BatchNormalization))
    assert any(layer.trainable for layer in top if isinstance(layer, keras.layers.Conv2D))


def test_mixed_precision_keeps_float32_output() -> None:
    with precision_policy(True):
        head = build_head(16, 6)
        assert head.layers[1].compute_dtype == "float16"
        assert head(np.zeros((1, 16), "float32")).dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_bad_config_names_the_argument() -> None:
    with pytest.raises(ValueError, match="strategy='fast' is invalid"):
        TrainConfig(backbone="vgg16", strategy="fast")
    with pytest.raises(ValueError, match="not in the registry"):
        TrainConfig(backbone="alexnet")


def test_failed_backbone_becomes_a_failed_result(ds, tmp_path: Path) -> None:
    r = train_one(ds, TrainConfig(**{**SMALL, "weights": "/nope.weights.h5"}), tmp_path / "x",
                  cache_root=str(tmp_path / "c"))
    assert r.status == "failed" and "no such file" in r.error
    assert (tmp_path / "x" / "error.txt").exists()
    shutil.rmtree(tmp_path / "x")


def test_test_metrics_come_from_the_saved_model(ds, tmp_path: Path) -> None:
    """test_predictions.csv and the test metrics are the saved model.keras's own predictions, end to end."""
    import pandas as pd

    train_one(ds, TrainConfig(**SMALL), tmp_path / "m", cache_root=str(tmp_path / "cache"), bootstrap=0)
    meta = json.loads((tmp_path / "m" / "metrics.json").read_text())["meta"]
    assert meta["predictions"] == {"train": "cached features", "val": "cached features", "test": "saved model"}
    assert meta["saved_model_agreement"] >= 0.995
    shipped = predict(load(str(tmp_path / "m" / "model.keras")), ds.split("test"), 48)
    recorded = pd.read_csv(tmp_path / "m" / "test_predictions.csv")
    assert recorded["key"].tolist() == shipped.keys
    assert (recorded["y_pred"].to_numpy() == shipped.probs.argmax(1)).all()


@pytest.fixture(scope="module")
def colour_ds(tmp_path_factory: pytest.TempPathFactory):
    """Six classes told apart by colour: even a random-init backbone + head learns them (not collapsed)."""
    from PIL import Image

    from scene.metadata import CLASS_NAMES

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    hues = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220), (220, 40, 220)]
    for c, hue in zip(CLASS_NAMES, hues, strict=True):
        (root / c).mkdir()
        for i in range(10):
            px = np.clip(np.array(hue) + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype("uint8")
            Image.fromarray(px).save(root / c / f"{i}.png")
    return build_dataset(str(root))


def test_saved_model_that_is_not_the_feature_network_fails_the_run(colour_ds, tmp_path: Path) -> None:
    from scene.train.fit import ModelMismatch, all_predictions

    # VGG: no BatchNorm, random features stay informative; 200 one-batch epochs let the head's BatchNorm
    # statistics settle (after 40 the model predicted one class at inference)
    cfg = TrainConfig(**{**SMALL, "backbone": "vgg16", "image_size": 32, "epochs": 200, "patience": 200,
                         "learning_rate": 1e-2, "views": 0})
    cache = str(tmp_path / "cache")
    fitted = fit(colour_ds, cfg, tmp_path / "m", cache_root=cache)
    good = all_predictions(colour_ds, cfg, fitted, cache_root=cache)["test"]
    assert len(set(good.probs.argmax(1))) >= 2, "the check needs a model whose predictions vary"
    model = load(str(fitted.model_path))
    backbone = backbone_of(model)
    keras.utils.set_random_seed(99)  # another random network under the same head
    backbone.set_weights(type(backbone).from_config(backbone.get_config()).get_weights())
    model.save(fitted.model_path)
    with pytest.raises(ModelMismatch, match="agrees with the cached-feature predictions on only"):
        all_predictions(colour_ds, cfg, fitted, cache_root=cache)


def test_random_init_extraction_in_another_process_builds_the_same_network(ds, tmp_path: Path) -> None:
    """Extraction and training run as separate Prefect tasks (maybe processes): seeded builds agree."""
    from scene.model import backbones
    from scene.train.fit import all_predictions, extract_features, fit_frozen

    cfg = TrainConfig(**SMALL)
    cache = str(tmp_path / "cache")
    w = backbones.resolve_weights(backbones.get_spec("mobilenetv2"), "none", 48, seed=cfg.seed)
    stats = extract_features(ds, cfg, w, cache)
    backbones._BUILT.clear()  # as if the next step ran in a fresh process
    keras.utils.set_random_seed(12345)  # and the global RNG had moved on
    fitted = fit_frozen(ds, cfg, tmp_path / "m", w, cache_root=cache, extracted=stats)
    preds = all_predictions(ds, cfg, fitted, cache_root=cache)
    assert preds["test"].source == "saved model" and preds["test"].agreement == 1.0


def test_mirror_recipe_ships_a_mirror_invariant_model_scored_end_to_end(ds, tmp_path: Path) -> None:
    """``mirror=True``: trained on images and their mirrors; the saved model averages over both (so it is
    exactly left-right invariant), and its test predictions agree with the cached image+mirror features."""
    cfg = TrainConfig(**{**SMALL, "views": 0}, mirror=True)
    r = train_one(ds, cfg, tmp_path / "m", cache_root=str(tmp_path / "cache"), bootstrap=20)
    assert r.status in ("ok", "collapsed"), r.error
    meta = json.loads((tmp_path / "m" / "metrics.json").read_text())["meta"]
    assert meta["predictions"]["test"] == "saved model" and meta["saved_model_agreement"] >= 0.995
    model = load(str(tmp_path / "m" / "model.keras"))
    x = np.concatenate(list(image_dataset(ds.manifest.head(6), 48, num_classes=1, batch_size=6, labels=False)))
    np.testing.assert_allclose(model.predict_on_batch(x), model.predict_on_batch(x[:, :, ::-1]), atol=1e-5)
    cache = features.FeatureCache(str(tmp_path / "cache"), features.namespace(
        "mobilenetv2", r_weights(cfg), 48, cfg.augment, cfg.seed, "float32"))
    assert not cache.missing([features.entry_key(s, features.MIRROR_VIEW) for s in ds.split("train")["sha256"]])


def r_weights(cfg: TrainConfig):
    from scene.train.fit import weights_for

    return weights_for(cfg)


def test_refit_ships_a_head_trained_on_train_and_val_and_reports_held_out_val(ds, tmp_path: Path) -> None:
    """``refit=True``: early stopping on val picks the epochs; a fresh head then trains on train + val for exactly
    that many epochs with the same learning-rate schedule and ships. Val metrics come from the held-out head."""
    import pandas as pd

    from scene.train.fit import HELD_OUT

    cfg = TrainConfig(**{**SMALL, "views": 0, "epochs": 5}, refit=True)
    r = train_one(ds, cfg, tmp_path / "r", cache_root=str(tmp_path / "cache"), bootstrap=20)
    assert r.status in ("ok", "collapsed"), r.error
    hist = pd.read_csv(tmp_path / "r" / "history.csv")
    head, refit = hist[hist["phase"] == "head"], hist[hist["phase"] == "refit"]
    chosen = int(head["val_loss"].to_numpy().argmin()) + 1
    assert len(refit) == chosen and refit["val_loss"].isna().all()
    assert "lr" in hist.columns, list(hist.columns)  # Keras' learning_rate, recorded per epoch as lr
    np.testing.assert_allclose(refit["lr"].to_numpy(), head["lr"].to_numpy()[:chosen], rtol=1e-6)
    meta = json.loads((tmp_path / "r" / "metrics.json").read_text())["meta"]
    assert meta["predictions"]["val"] == HELD_OUT and meta["predictions"]["test"] == "saved model"
    assert meta["saved_model_agreement"] >= 0.995
    with pytest.raises(ValueError, match="refit"):
        TrainConfig(**{**SMALL, "strategy": "online"}, refit=True)


def test_finetune_refit_ships_a_network_tuned_on_train_and_val_and_reports_held_out_val(ds, tmp_path: Path) -> None:
    """``finetune_refit``: val picks the fine-tuning epochs; the network that ships is fine-tuned again from the
    frozen model on train + val for exactly that many epochs (no val left to watch). The run's val metrics are the
    selection network's, its test metrics the saved file's."""
    from sklearn.metrics import accuracy_score

    from scene.train.fit import HELD_OUT_TUNED

    cfg = TrainConfig(**{**SMALL, "finetune_blocks": 2, "finetune_epochs": 3, "finetune_lr": 1e-3, "patience": 5,
                         "finetune_refit": True})
    out = tmp_path / "mobilenetv2"
    r = train_one(ds, cfg, out, cache_root=str(tmp_path / "cache"), bootstrap=0)
    assert r.status in ("ok", "collapsed"), r.error
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["phase"].unique()) == ["head", "finetune", "finetune-refit"]
    tuned, refit = hist[hist["phase"] == "finetune"], hist[hist["phase"] == "finetune-refit"]
    chosen = int(tuned["val_loss"].to_numpy().argmin()) + 1
    assert len(tuned) == 3 and len(refit) == chosen and refit["val_loss"].isna().all()
    assert set(tuned["images"]) == {len(ds.split("train"))}  # the photos each epoch trained on
    assert set(refit["images"]) == {len(ds.split("train")) + len(ds.split("val"))}
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["meta"]["predictions"]["val"] == HELD_OUT_TUNED and doc["meta"]["predictions"]["test"] == "saved model"
    shipped, frozen = load(str(out / "model.keras")), load(str(out / "frozen.keras"))
    assert not all(np.array_equal(a, b) for a, b in zip(shipped.get_weights(), frozen.get_weights(), strict=True))
    test = ds.split("test")
    probs = predict(shipped, test, 48).probs
    assert doc["test"]["accuracy"] == pytest.approx(accuracy_score(test["label_index"], probs.argmax(1)))
    assert "fine-tuned again on train + val" in json.loads((out / "config.json").read_text())["summary"]["refit"]
    with pytest.raises(ValueError, match="finetune_refit=True is invalid"):
        TrainConfig(**{**SMALL, "finetune_refit": True})


def test_finetune_ensemble_ships_the_average_of_the_selection_and_the_refit_network(ds, tmp_path: Path) -> None:
    """``finetune_ensemble``: the saved model averages two networks, the selection one (trained on train; its val
    predictions are the run's held-out val) and the refit one (trained on train + val); the run's test metrics are
    the saved ensemble's; the drift audit reads features from the first member."""
    from sklearn.metrics import accuracy_score

    from scene.audit.source import model_outputs
    from scene.model.network import members

    cfg = TrainConfig(**{**SMALL, "finetune_blocks": 2, "finetune_epochs": 2, "finetune_lr": 1e-3, "patience": 5,
                         "finetune_refit": True, "finetune_ensemble": True, "mirror": True})
    out = tmp_path / "mobilenetv2"
    r = train_one(ds, cfg, out, cache_root=str(tmp_path / "cache"), bootstrap=0)
    assert r.status in ("ok", "collapsed"), r.error
    shipped = load(str(out / "model.keras"))
    selection, refit = members(shipped)
    assert [m.name for m in (selection, refit)] == ["member_0", "member_1"]
    assert not all(np.array_equal(a, b) for a, b in zip(selection.get_weights(), refit.get_weights(), strict=True))
    test, val = ds.split("test"), ds.split("val")
    probs = predict(shipped, test, 48).probs
    np.testing.assert_allclose(probs, (predict(selection, test, 48).probs + predict(refit, test, 48).probs) / 2,
                               atol=1e-5)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["test"]["accuracy"] == pytest.approx(accuracy_score(test["label_index"], probs.argmax(1)))
    held_out = predict(selection, val, 48).probs.argmax(1)  # val is the selection network's alone
    assert doc["val"]["accuracy"] == pytest.approx(accuracy_score(val["label_index"], held_out))
    assert "fine-tuned again on train + val" in json.loads((out / "config.json").read_text())["summary"]["ensemble"]
    x, p = model_outputs(shipped, test.head(4))
    assert x.shape == (4, 1280) and np.allclose(p, probs[:4], atol=1e-5)
    with pytest.raises(ValueError, match="finetune_ensemble=True is invalid"):
        TrainConfig(**{**SMALL, "finetune_blocks": 2, "finetune_ensemble": True})


def test_refit_with_augmented_views_and_mirror_trains(ds, tmp_path: Path) -> None:
    """The refit head trains on train + val with the training views, so val images get them extracted too (they
    used to have only the plain view and the mirror: KeyError '<sha>:1')."""
    cfg = TrainConfig(**{**SMALL, "views": 1, "epochs": 3}, mirror=True, refit=True)
    r = train_one(ds, cfg, tmp_path / "r", cache_root=str(tmp_path / "cache"), bootstrap=20)
    assert r.status != "failed" and r.error == "", r.error
    cache = features.FeatureCache(str(tmp_path / "cache"), features.namespace(
        "mobilenetv2", r_weights(cfg), 48, cfg.augment, cfg.seed, "float32"))
    val = ds.split("val")["sha256"]
    assert not cache.missing([features.entry_key(s, v) for s in val for v in (0, 1, features.MIRROR_VIEW)])
