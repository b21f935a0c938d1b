"""The model registry against the real local S3 gateway: versions, the gate, races, rollback, the CLI."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scene import registry
from scene.cli import models
from scene.data import storage
from scene.registry import ModelVersion, RegistryError
from scene.registry import store as registry_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N_TEST = 200  # synthetic test images
DATA = "s3://scene-data/datasets/demo/"  # the dataset lineage of most fake models here


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh bucket per test, so every test sees an empty registry under the default prefix."""
    name = f"registry-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def _predictions(correct: np.ndarray) -> pd.DataFrame:
    y_true = np.arange(len(correct)) % 6
    y_pred = np.where(correct, y_true, (y_true + 1) % 6)
    return pd.DataFrame({"key": [f"s3://data/test/{i}.jpg" for i in range(len(correct))],
                         "sha256": [f"{i:064x}" for i in range(len(correct))], "y_true": y_true, "y_pred": y_pred,
                         "correct": correct})


def _fake_model(root: Path, backbone: str, correct: np.ndarray, *, collapsed: bool = False, data: str = DATA,
                **flags: bool) -> tuple[Path, pd.DataFrame]:
    """A trained-backbone folder with a small unique placeholder ``model.keras`` (not loadable: the gate runs
    with ``smoke=False`` on these) and test metrics matching ``correct``."""
    folder = root / f"{backbone}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(os.urandom(256))
    acc = float(np.mean(correct))
    test = {"n": len(correct), "accuracy": acc, "f1_weighted": acc - 0.01, "f1_macro": acc - 0.02,
            "collapsed": collapsed}
    meta = {"backbone": backbone, "data_fingerprint": "fp-1", "random_init": False, "synthetic_data": False,
            "data_source": data, **flags}
    (folder / "metrics.json").write_text(json.dumps({"test": test, "meta": meta}))
    (folder / "config.json").write_text(json.dumps({"backbone": backbone}))
    (folder / "history.csv").write_text("epoch,loss\n0,1.0\n")
    (folder / "roc.png").write_bytes(b"\x89PNG fake")
    (folder / "report.html").write_text("<html></html>")
    (folder / "model_card.md").write_text(f"# {backbone}\n")
    return folder, _predictions(correct)


def _correct(acc: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(N_TEST) < acc


def _registered(s3: Any, bucket: str, tmp_path: Path, backbone: str, acc: float, seed: int,
                collapsed: bool = False, **kw: Any) -> ModelVersion:
    folder, preds = _fake_model(tmp_path, backbone, _correct(acc, seed), collapsed=collapsed, **kw)
    return registry.register(s3, bucket, folder, backbone, preds)


def _stored_predictions(s3: Any, v: ModelVersion) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(storage.read_bytes(v.uri + "test_predictions.csv", s3)))


def test_gateway_ignores_conditional_puts(s3: Any, bucket: str) -> None:
    """Observed on JuiceFS gateway 1.4.2; if this fails the gateway honours them now: update registry's docstring."""
    assert registry.conditional_writes(s3, bucket) is False


def test_register_uploads_once_and_lists_versions(s3: Any, bucket: str, tmp_path: Path) -> None:
    folder, preds = _fake_model(tmp_path, "vgg16", _correct(0.8, 1))
    v = registry.register(s3, bucket, folder, "vgg16", preds)
    assert v.version == f"vgg16-{storage.sha256_file(folder / 'model.keras')[:12]}"
    assert v.uri == f"s3://{bucket}/models/vgg16/{v.version}/" and v.status == "ok" and v.data_fingerprint == "fp-1"
    assert v.dataset == DATA and v.synthetic_data is False and v.random_init is False
    names = {k.rsplit("/", 1)[1] for k, _ in storage.list_files(v.uri, s3)}
    assert {"model.keras", "metrics.json", "config.json", "history.csv", "roc.png", "report.html", "model_card.md",
            "test_predictions.csv", "checksums.json"} <= names
    stored = _stored_predictions(s3, v)
    assert list(stored.columns) == list(registry.PREDICTION_COLUMNS) and stored["correct"].dtype == bool
    checksums = json.loads(storage.read_bytes(v.uri + "checksums.json", s3))
    assert any(c["uri"].endswith("test_predictions.csv") for c in checksums)

    again = registry.register(s3, bucket, folder, "vgg16", preds)
    assert again == v
    other = _registered(s3, bucket, tmp_path, "resnet50", 0.7, 2)
    versions = registry.list_versions(s3, bucket)
    assert [e["version"] for e in versions] == [v.version, other.version]
    assert [e["version"] for e in registry.list_versions(s3, bucket, "resnet50")] == [other.version]
    assert registry.show(s3, bucket, v.version)["metrics"]["test"]["n"] == N_TEST


def test_register_errors_name_the_problem(s3: Any, bucket: str, tmp_path: Path) -> None:
    folder, preds = _fake_model(tmp_path, "vgg16", _correct(0.8, 1))
    with pytest.raises(RegistryError, match="missing columns \\['sha256'\\]"):
        registry.register(s3, bucket, folder, "vgg16", preds.drop(columns=["sha256"]))
    (folder / "model.keras").unlink()
    with pytest.raises(RegistryError, match=r"model\.keras: missing"):
        registry.register(s3, bucket, folder, "vgg16", preds)
    with pytest.raises(RegistryError, match=r"not in s3://.*registry\.json"):
        registry.show(s3, bucket, "vgg16-000000000000")


def test_concurrent_registrations_lose_no_entry(s3: Any, bucket: str, tmp_path: Path, settings: Any) -> None:
    models = [_fake_model(tmp_path, f"b{i}", _correct(0.5, i)) for i in range(4)]
    barrier = threading.Barrier(len(models))
    done: list[str] = []

    def work(i: int) -> None:
        client = storage.s3_client(settings)
        barrier.wait()
        done.append(registry.register(client, bucket, models[i][0], f"b{i}", models[i][1]).version)

    _run_threads(work, len(models))
    assert sorted(e["version"] for e in registry.list_versions(s3, bucket)) == sorted(done)


def _run_threads(work: Any, n: int) -> None:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            work(i)
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def _gate(s3: Any, bucket: str, challenger: ModelVersion, smoke: bool = False) -> registry.Decision:
    """The promotion gate as a flow runs it: read the dataset's champion, its stored predictions, decide, write.

    (A flow scores the champion on the current test split; these fake versions share one test split.)
    """
    observed = registry.read_champion(s3, bucket, dataset=challenger.dataset)
    mine = _stored_predictions(s3, challenger)
    theirs = None
    if observed.champion is not None:
        theirs = _stored_predictions(s3, ModelVersion.from_dict(registry.get_version(s3, bucket,
                                                                                   observed.champion["version"])))
    return registry.gate(s3, bucket, challenger, mine, theirs, observed=observed, smoke=smoke)


def test_gate_promotes_first_and_only_significantly_better(s3: Any, bucket: str, tmp_path: Path) -> None:
    assert registry.champion(s3, bucket) is None
    collapsed = _registered(s3, bucket, tmp_path, "efficientnetb0", 0.17, 9, collapsed=True)
    assert _gate(s3, bucket, collapsed).promote is False and registry.champion(s3, bucket) is None

    first = _registered(s3, bucket, tmp_path, "vgg16", 0.70, 1)
    d = _gate(s3, bucket, first)
    assert d.promote and d.reason == "no champion yet"
    doc = registry.champion(s3, bucket)
    assert doc["version"] == first.version and doc["history"] == [] and doc["decision"]["promote"] is True

    worse = _registered(s3, bucket, tmp_path, "resnet50", 0.55, 2)
    d = _gate(s3, bucket, worse)
    assert not d.promote and d.champion == first.version and d.n_paired == N_TEST
    assert registry.champion(s3, bucket)["version"] == first.version

    better = _registered(s3, bucket, tmp_path, "resnet101", 0.95, 3)
    d = _gate(s3, bucket, better)
    assert d.promote and d.p_value < 0.05 and d.b > d.c and all(r["ok"] for r in d.per_class)
    doc = registry.champion(s3, bucket)
    assert doc["version"] == better.version and [h["version"] for h in doc["history"]] == [first.version]
    assert doc["decision"]["champion"] == first.version
    assert doc["data"] == DATA and doc["model"] == better.uri + "model.keras"
    assert _gate(s3, bucket, better).reason == "challenger already is the champion"


def test_gate_with_a_stale_champion_writes_nothing(s3: Any, bucket: str, tmp_path: Path) -> None:
    old = registry.read_champion(s3, bucket, dataset=DATA)
    a = _registered(s3, bucket, tmp_path, "vgg16", 0.7, 1)
    b = _registered(s3, bucket, tmp_path, "resnet50", 0.7, 2)
    assert registry.promote(s3, bucket, a, None, expected_etag=None)
    d = registry.gate(s3, bucket, b, _stored_predictions(s3, b), None, observed=old, smoke=False)
    assert not d.promote and "changed while gating" in d.reason
    assert registry.read_decision(s3, b) == d
    assert registry.champion(s3, bucket)["version"] == a.version


def _two_champions(s3: Any, bucket: str, tmp_path: Path, n: int) -> tuple[ModelVersion, list[ModelVersion], str]:
    base = _registered(s3, bucket, tmp_path, "vgg16", 0.7, 1)
    assert registry.promote(s3, bucket, base, None, expected_etag=None)
    rivals = [_registered(s3, bucket, tmp_path, f"rival{i}", 0.8, 10 + i) for i in range(n)]
    etag = registry.read_champion(s3, bucket, dataset=DATA).etag
    assert etag
    return base, rivals, etag


def _assert_one_winner(s3: Any, bucket: str, base: ModelVersion, rivals: list[ModelVersion],
                       results: dict[str, bool]) -> None:
    winners = [v for v, ok in results.items() if ok]
    assert len(winners) == 1, results
    doc = registry.champion(s3, bucket)
    assert doc["version"] == winners[0]
    assert [h["version"] for h in doc["history"]] == [base.version]
    assert {r.version for r in rivals} == set(results)


def test_racing_threads_leave_one_champion(s3: Any, bucket: str, tmp_path: Path, settings: Any) -> None:
    base, rivals, etag = _two_champions(s3, bucket, tmp_path, 4)
    barrier = threading.Barrier(len(rivals))
    results: dict[str, bool] = {}

    def work(i: int) -> None:
        client = storage.s3_client(settings)
        barrier.wait()
        results[rivals[i].version] = registry.promote(client, bucket, rivals[i], None, expected_etag=etag)

    _run_threads(work, len(rivals))
    _assert_one_winner(s3, bucket, base, rivals, results)


PROMOTER = """
import json, sys, time
from scene import registry
from scene.data import storage
from scene.settings import Settings
bucket, version, etag, start = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s3 = storage.s3_client(Settings.from_env())
registry.list_versions(s3, bucket)  # connect before the start line
time.sleep(max(0.0, start - time.time()))
print(json.dumps(registry.promote(s3, bucket, version, None, expected_etag=etag)))
"""


def test_racing_processes_leave_one_champion(s3: Any, bucket: str, tmp_path: Path, settings: Any) -> None:
    base, rivals, etag = _two_champions(s3, bucket, tmp_path, 2)
    env = {**os.environ, **_env(settings)}
    start = time.time() + 4  # after both interpreters have imported scene.registry (~2 s)
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, bucket, json.dumps(r.to_dict()), etag, str(start)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in rivals]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = {r.version: json.loads(o[0].strip().splitlines()[-1]) for r, o in zip(rivals, outs, strict=True)}
    _assert_one_winner(s3, bucket, base, rivals, results)


def test_lease_excludes_writers_on_other_machines(s3: Any, bucket: str, settings: Any) -> None:
    """Without the local flock (as for writers on two machines), the S3 lease alone keeps holders apart."""
    inside, peak, lock = [0], [0], threading.Lock()

    def work(i: int) -> None:
        client = storage.s3_client(settings)
        for _ in range(2):
            with registry_store._lease(client, bucket, "models/champion.json.lock"):
                with lock:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                time.sleep(0.1)
                with lock:
                    inside[0] -= 1

    _run_threads(work, 3)
    assert peak[0] == 1
    assert not storage.exists(f"s3://{bucket}/models/champion.json.lock", s3)


def test_an_abandoned_lease_expires(s3: Any, bucket: str) -> None:
    stale = {"token": "dead", "holder": "gone:1", "expires": "2000-01-01T00:00:00+00:00"}
    storage.write_bytes(f"s3://{bucket}/models/x.lock", json.dumps(stale).encode(), s3)
    with registry_store._lease(s3, bucket, "models/x.lock", timeout=5) as token:  # a live lease: ConflictError
        held = json.loads(storage.read_bytes(f"s3://{bucket}/models/x.lock", s3))
    assert held["token"] == token != "dead"  # the expired lease was taken over, not waited out
    assert not storage.exists(f"s3://{bucket}/models/x.lock", s3)  # and released


def test_promote_is_idempotent_and_refuses_stale_etags(s3: Any, bucket: str, tmp_path: Path) -> None:
    a = _registered(s3, bucket, tmp_path, "vgg16", 0.7, 1)
    b = _registered(s3, bucket, tmp_path, "resnet50", 0.7, 2)
    assert registry.promote(s3, bucket, a, None, expected_etag=None)
    assert registry.promote(s3, bucket, a, None, expected_etag=None)  # a retried promotion
    assert registry.promote(s3, bucket, b.to_dict(), None, expected_etag=None) is False
    assert registry.champion(s3, bucket)["version"] == a.version


def test_rollback_restores_the_previous_champion(s3: Any, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="there is no champion"):
        registry.rollback(s3, bucket)
    vs = [_registered(s3, bucket, tmp_path, f"m{i}", 0.7, i) for i in range(3)]
    for v in vs:
        registry.promote_version(s3, bucket, v.version, "test")
    doc = registry.rollback(s3, bucket)
    assert doc["version"] == vs[1].version and [h["version"] for h in doc["history"]] == [vs[0].version]
    assert doc["decision"]["reason"] == f"rollback from {vs[2].version}"
    assert registry.rollback(s3, bucket)["version"] == vs[0].version
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(s3, bucket)


@pytest.mark.parametrize(("flags", "shown"), [({"collapsed": True}, "collapsed"),
                                              ({"random_init": True}, "random-init"),
                                              ({"synthetic_data": True}, "trained on synthetic data")])
def test_manual_promotion_refuses_flagged_versions_unless_forced(s3: Any, bucket: str, tmp_path: Path,
                                                                  flags: dict[str, bool], shown: str) -> None:
    bad = _registered(s3, bucket, tmp_path, "efficientnetb0", 0.9, 1, **flags)
    assert _gate(s3, bucket, bad).promote is False and registry.champion(s3, bucket) is None  # never automatically
    with pytest.raises(RegistryError, match=f"is {shown}, so it is never promoted automatically"):
        registry.promote_version(s3, bucket, bad.version)
    doc = registry.promote_version(s3, bucket, bad.version, "debugging", force=True)
    assert doc["version"] == bad.version and f"(forced: {shown})" in doc["decision"]["reason"]
    assert registry.read_decision(s3, bad).reason == doc["decision"]["reason"]
    with pytest.raises(RegistryError, match="Did you mean"):
        registry.promote_version(s3, bucket, bad.version[:-1] + "x")


def _env(settings: Any) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": settings.s3_endpoint_url, "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
            "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key, "AWS_DEFAULT_REGION": settings.aws_region}


def _cli(args: list[str]) -> None:
    p = argparse.ArgumentParser()
    models.register(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(args)
    a.func(a)


def test_cli_list_show_promote_rollback(s3: Any, bucket: str, tmp_path: Path, settings: Any,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in {**_env(settings), "SCENE_ARTIFACT_BUCKET": bucket}.items():
        monkeypatch.setenv(k, v)
    _cli(["models", "list"])
    assert "no registered models" in capsys.readouterr().out
    a = _registered(s3, bucket, tmp_path, "vgg16", 0.7, 1)
    b = _registered(s3, bucket, tmp_path, "resnet50", 0.8, 2, synthetic_data=True)
    other = _registered(s3, bucket, tmp_path, "vgg16", 0.6, 3, data="s3://scene-data/datasets/other/")

    _cli(["models", "promote", a.version])
    assert capsys.readouterr().out.strip() == f"champion of {DATA}: {a.version} (was (none))"
    with pytest.raises(RegistryError, match="trained on synthetic data"):
        _cli(["models", "promote", b.version])
    _cli(["models", "promote", b.version, "--reason", "looks better", "--force"])
    assert f"champion of {DATA}: {b.version} (was {a.version})" in capsys.readouterr().out
    _cli(["models", "promote", other.version])
    capsys.readouterr()

    _cli(["models", "list"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["version", "backbone", "dataset", "created"]
    starred = {line.split()[1] for line in lines if line.startswith("*")}
    assert starred == {b.version, other.version}
    assert any(b.version in line and "synthetic data" in line for line in lines)
    assert f"champion of {DATA}: {b.version}" in out and f"champion of s3://scene-data/datasets/other/: " \
        f"{other.version}" in out
    _cli(["models", "list", "--backbone", "vgg16", "--dataset", DATA])
    out = capsys.readouterr().out
    assert a.version in out and b.version not in out.split("champion")[0] and other.version not in out

    _cli(["models", "show", a.version])
    out = capsys.readouterr().out
    assert f"version: {a.version}" in out and f"dataset: {DATA}" in out and "champion: no" in out
    assert "test" in out and "f1_weighted" in out

    with pytest.raises(RegistryError, match="champions exist for 2 datasets"):
        _cli(["models", "rollback"])
    _cli(["models", "rollback", "--dataset", DATA.rstrip("/")])
    assert capsys.readouterr().out.strip() == f"champion of {DATA}: {a.version} (rolled back from {b.version})"
    with pytest.raises(RegistryError, match="no previous champion"):
        _cli(["models", "rollback", "--dataset", DATA])


def test_champions_are_per_dataset(s3: Any, bucket: str, tmp_path: Path) -> None:
    """Each data lineage has its own pointer; a challenger is gated only against its own dataset's champion."""
    other_data = "s3://scene-data/datasets/winter/"
    demo = _registered(s3, bucket, tmp_path, "vgg16", 0.9, 1)
    assert _gate(s3, bucket, demo).reason == "no champion yet"
    weak_other = _registered(s3, bucket, tmp_path, "resnet50", 0.5, 2, data=other_data)
    d = _gate(s3, bucket, weak_other)  # far worse than demo's champion, but it is the first of its own dataset
    assert d.promote and d.reason == "no champion yet" and d.dataset == other_data
    docs = registry.champions(s3, bucket)
    assert {k: v["version"] for k, v in docs.items()} == {DATA: demo.version, other_data: weak_other.version}
    for data, v in ((DATA, demo), (other_data, weak_other)):
        doc = docs[data]
        assert (doc["data"], doc["model"], doc["uri"], doc["backbone"]) == (data, v.uri + "model.keras", v.uri,
                                                                            v.backbone)
        assert registry.read_champion(s3, bucket, dataset=data.rstrip("/")).champion["version"] == v.version
        assert storage.exists(f"s3://{bucket}/{registry.champion_key(data)}", s3)
    assert registry.champion(s3, bucket)["version"] == weak_other.version  # newest of any dataset
    # predictions never use "the newest of any": a named dataset's champion, or an error that lists the datasets
    assert registry.serving_champion(s3, bucket, DATA)["version"] == demo.version
    with pytest.raises(registry.RegistryError, match="2 datasets have a champion") as err:
        registry.serving_champion(s3, bucket)
    assert DATA in str(err.value) and other_data in str(err.value)
    with pytest.raises(registry.RegistryError, match="has no champion yet"):
        registry.serving_champion(s3, bucket, "s3://scene-data/datasets/none/")
    assert registry.read_champion(s3, bucket, dataset="s3://scene-data/datasets/none/").champion is None

    challenger = _registered(s3, bucket, tmp_path, "resnet101", 0.6, 3, data=other_data)
    with pytest.raises(ValueError, match="gated only against the champion of its own dataset"):
        registry.gate(s3, bucket, challenger, _stored_predictions(s3, challenger),
                      _stored_predictions(s3, demo), observed=registry.read_champion(s3, bucket, dataset=DATA))
    d = _gate(s3, bucket, challenger)
    assert d.champion == weak_other.version and d.n_paired == N_TEST
    assert registry.champion(s3, bucket, dataset=DATA)["version"] == demo.version  # untouched by the other lineage


def test_decision_objects_are_stored_and_checksummed(s3: Any, bucket: str, tmp_path: Path) -> None:
    first = _registered(s3, bucket, tmp_path, "vgg16", 0.6, 1)
    _gate(s3, bucket, first)
    card_before = storage.read_bytes(first.uri + "model_card.md", s3)
    better = _registered(s3, bucket, tmp_path, "resnet50", 0.95, 2)
    d = _gate(s3, bucket, better)
    assert d.promote
    stored = json.loads(storage.read_bytes(better.uri + "decision.json", s3))
    assert registry.Decision.from_dict(stored) == d and stored["decided_at"]
    assert (stored["b"], stored["c"], stored["n_paired"]) == (d.b, d.c, N_TEST) and stored["per_class"]
    md = storage.read_bytes(better.uri + "decision.md", s3).decode()
    assert md.startswith(f"# Promotion decision: {better.version}") and "| class | n |" in md
    assert storage.read_bytes(first.uri + "model_card.md", s3) == card_before
    assert "Promotion decision" not in storage.read_bytes(better.uri + "model_card.md", s3).decode()
    listed = {e["uri"].rsplit("/", 1)[1]: e for e in json.loads(storage.read_bytes(better.uri + "checksums.json", s3))}
    names = {k.rsplit("/", 1)[1] for k, _ in storage.list_files(better.uri, s3)}
    assert set(listed) == names - {"checksums.json"}  # every file of the folder, the decision included
    for name, e in listed.items():
        data = storage.read_bytes(better.uri + name, s3)
        assert (e["sha256"], e["bytes"]) == (storage.sha256_bytes(data), len(data)), name
    _gate(s3, bucket, better)  # gating again rewrites the decision without duplicating checksum entries
    again = json.loads(storage.read_bytes(better.uri + "checksums.json", s3))
    assert sorted(e["uri"] for e in again) == sorted(e["uri"] for e in listed.values())


def test_a_model_that_does_not_load_is_not_promoted(s3: Any, bucket: str, tmp_path: Path) -> None:
    """The smoke check loads model.keras in a fresh process: a placeholder file fails it and the pointer stays."""
    folder, preds = _fake_model(tmp_path, "vgg16", _correct(0.9, 1))
    img = tmp_path / "img.png"  # the test image the smoke process reads (a local key)
    Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(img)
    preds["key"] = str(img)
    v = registry.register(s3, bucket, folder, "vgg16", preds)
    d = _gate(s3, bucket, v, smoke=True)
    assert d.promote is False and "does not load and predict in a fresh process" in d.reason
    assert "the challenger had won: no champion yet" in d.reason and d.smoke and d.smoke["ok"] is False
    assert registry.champion(s3, bucket) is None and registry.read_decision(s3, v) == d


def test_conditional_write_path_skips_the_lease(s3: Any, bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a store that honours If-Match (the gateway ignores the headers, the flock still serialises)."""
    monkeypatch.setitem(registry_store._CAPABILITY, (s3.meta.endpoint_url, bucket), True)
    monkeypatch.setattr(registry_store, "_lease", None)  # would raise if used
    a = _registered(s3, bucket, tmp_path, "vgg16", 0.7, 1)
    b = _registered(s3, bucket, tmp_path, "resnet50", 0.7, 2)
    assert registry.promote(s3, bucket, a, None, expected_etag=None)
    assert registry.promote(s3, bucket, b, None, expected_etag=None) is False
    assert registry.promote(s3, bucket, b, None, expected_etag=registry.read_champion(s3, bucket, dataset=DATA).etag)
    assert [h["version"] for h in registry.champion(s3, bucket)["history"]] == [a.version]
