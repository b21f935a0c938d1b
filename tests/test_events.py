"""The storage-event bridge without servers: parsing, filtering, debouncing, and the HTTP endpoint in-process."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scene.ops.batcher import Batcher
from scene.ops.bridge import BridgeServer, serve
from scene.ops.notifications import (
    KEY_SAMPLE,
    BadNotification,
    BridgeConfig,
    ObjectEvent,
    matching,
    parse_notification,
    polling_config,
)
from scene.ops.polling import changed_roots
from scene.ops.prefect_events import (
    EmitError,
    bridge_stats,
    content_fingerprint,
    dataset_event,
    emit_prefect_event,
    root_objects,
)
from tests.support.bridge import TOKEN, events_parser, minio_body, post


def aws_body(*keys: str, bucket: str = "scene-data", name: str = "ObjectCreated:Put") -> bytes:
    """An AWS S3 event notification (keys URL-encoded as AWS does)."""
    import urllib.parse

    return json.dumps({"Records": [
        {"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventName": name,
         "s3": {"bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                "object": {"key": urllib.parse.quote_plus(k, safe="/"), "size": 123, "eTag": "abc123",
                           "sequencer": "0A1B"}}}
        for k in keys]}).encode()


def ev(key: str, bucket: str = "scene-data", name: str = "ObjectCreated:Put") -> ObjectEvent:
    return ObjectEvent(bucket=bucket, key=key, size=1, etag="e", event_name=name)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# ------------------------------------------------------------------------------------------------ parse


def test_parse_aws_format_decodes_keys() -> None:
    out = parse_notification(aws_body("datasets/my set/sea/a+b 1.jpg", "datasets/x/y/z.png"))
    assert out == [
        ObjectEvent("scene-data", "datasets/my set/sea/a+b 1.jpg", 123, "abc123", "ObjectCreated:Put"),
        ObjectEvent("scene-data", "datasets/x/y/z.png", 123, "abc123", "ObjectCreated:Put"),
    ]
    assert all(e.created for e in out)


def test_parse_minio_format() -> None:
    (e,) = parse_notification(minio_body("datasets/intel/seg_train/sea/1 2.jpg"))
    assert e == ObjectEvent("scene-data", "datasets/intel/seg_train/sea/1 2.jpg", 2, "49f6", "s3:ObjectCreated:Put")
    assert e.created


def test_keys_are_decoded_once_on_both_paths() -> None:
    """Records carry the key form-encoded (MinIO: Go's url.QueryEscape; AWS the same); the top-level MinIO
    ``Key`` is already decoded by the server, so decoding it again would turn a literal '+' into a space."""
    key = "datasets/my set/sea/a+b c%41 é.jpg"
    aws = json.loads(aws_body(key))
    minio = json.loads(minio_body(key))
    minio["Records"][0]["s3"]["object"]["key"] = urllib.parse.quote_plus(key, safe="")  # as MinIO sends it
    for body in (aws, minio):
        assert [e.key for e in parse_notification(json.dumps(body).encode())] == [key]
    key_only = {"EventName": "s3:ObjectCreated:Put", "Key": f"scene-data/{key}"}
    assert [e.key for e in parse_notification(json.dumps(key_only).encode())] == [key]


@pytest.mark.parametrize(
    "key",
    ["datasets/../sea/1.jpg", "datasets/./x/1.jpg", "datasets/x/../../y/1.jpg", "datasets//x/1.jpg",
     "datasets/x//1.jpg", "datasets/x/\n/1.jpg", "datasets/x\x00/1.jpg", "datasets/x/sea\x1b[31m.jpg"],
)
def test_hostile_dataset_roots_are_ignored(key: str) -> None:
    cfg = BridgeConfig(token=TOKEN)
    why = cfg.reason_to_ignore(ev(key))
    assert why is not None and ("segment" in why or "control" in why), (key, why)
    assert cfg.root_of(key) is None
    encoded = parse_notification(aws_body(key))  # the same keys URL-encoded in a notification
    assert matching(cfg, encoded) == []


def test_parse_minio_without_records_and_aws_test_event() -> None:
    (e,) = parse_notification(json.dumps({"EventName": "s3:ObjectCreated:Put", "Key": "b/datasets/x/a.jpg"}).encode())
    assert (e.bucket, e.key) == ("b", "datasets/x/a.jpg")
    assert parse_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}).encode()) == []
    assert parse_notification(b'{"Records": []}') == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not"),
        (b"[1, 2]", "JSON list"),
        (b'"text"', "JSON str"),
        (b'{"hello": 1}', "no 'Records'"),
        (b'{"Records": {"a": 1}}', "'Records' must be a list"),
        (b'{"Records": [1]}', "Records[0]: expected an object"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put"}]}', "Records[0]: missing field 's3.bucket.name'"),
        (b'{"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {}}}]}',
         "missing field 's3.object.key'"),
        (b'{"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {"key": 5}}}]}',
         "s3.object.key: expected a non-empty string"),
        (b'{"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {"key": "k", "size": "big"}}}]}',
         "s3.object.size: expected an integer"),
        (b'{"Records": [{"eventName": "x", "s3": "nope"}]}', "expected an object at 'bucket'"),
        (b"[" * 100_000 + b"]" * 100_000, "not"),
    ],
)
def test_malformed_bodies_raise_bad_notification(body: bytes, words: str) -> None:
    with pytest.raises(BadNotification, match=None) as info:
        parse_notification(body)
    assert words in str(info.value)


# ----------------------------------------------------------------------------------------------- filter


def test_filter_by_event_bucket_prefix_folder_and_suffix() -> None:
    cfg = BridgeConfig(token=TOKEN)
    cases = {
        ev("datasets/intel/seg_train/sea/1.jpg"): None,
        ev("datasets/intel/a.JPEG"): None,
        ev("datasets/intel/_READY"): None,
        ev("datasets/intel/seg_train/_READY"): None,
        ev("datasets/intel/x.jpg", name="s3:ObjectCreated:CompleteMultipartUpload"): None,
        ev("datasets/intel/x.jpg", name="s3:ObjectRemoved:Delete"): "not an object creation",
        ev("datasets/intel/x.jpg", bucket="other"): "not the data bucket",
        ev("models/intel/x.jpg"): "outside the data prefix",
        ev("datasets/x.jpg"): "not inside a dataset folder",
        ev("datasets/intel/notes.txt"): "not an image",
        ev("datasets/intel/NOT_READY"): "not an image",
    }
    for e, expected in cases.items():
        why = cfg.reason_to_ignore(e)
        assert (why is None) if expected is None else (why is not None and expected in why), (e, why)
    assert len(matching(cfg, cases)) == 5
    assert cfg.root_of("datasets/intel/seg_train/sea/1.jpg") == "datasets/intel/"
    assert BridgeConfig(token=TOKEN, prefix="data").prefix == "data/"


def test_config_rejects_empty_token_and_hides_it() -> None:
    with pytest.raises(ValueError, match="token"):
        BridgeConfig(token="")
    assert TOKEN not in repr(BridgeConfig(token=TOKEN))


# ---------------------------------------------------------------------------------------------- batcher


def make_batcher(quiet: float = 30.0) -> tuple[Batcher, FakeClock, list[dict]]:
    clock, out = FakeClock(), []
    return Batcher(BridgeConfig(token=TOKEN, quiet_seconds=quiet), out.append, clock=clock), clock, out


def test_quiet_period_makes_one_emission_per_burst() -> None:
    b, clock, out = make_batcher(30)
    for i in range(5):
        b.add([ev(f"datasets/intel/seg_train/sea/{i}.jpg")])
        clock.advance(10)
        assert b.tick() == 0
    b.add([ev("datasets/intel/seg_train/sea/0.jpg")])  # a repeated key counts once
    clock.advance(29.9)
    assert b.tick() == 0 and out == [] and b.pending == 1
    clock.advance(0.2)
    assert b.tick() == 1
    assert b.tick() == 0
    (e,) = out
    assert e["event"] == "scene.data.arrived"
    assert e["resource"] == {"prefect.resource.id": "scene.dataset.scene-data/datasets/intel/",
                             "scene.bucket": "scene-data", "scene.prefix": "datasets/intel/"}
    p = e["payload"]
    assert (p["bucket"], p["prefix"], p["data"], p["count"]) == ("scene-data", "datasets/intel/",
                                                                 "s3://scene-data/datasets/intel/", 5)
    assert p["keys"] == [f"datasets/intel/seg_train/sea/{i}.jpg" for i in range(5)]
    assert b.pending == 0 and b.emitted == 1
    b.add([ev("datasets/intel/seg_train/sea/9.jpg")])  # the next burst is a new emission
    clock.advance(31)
    assert b.tick() == 1 and out[1]["payload"]["count"] == 1


def test_ready_marker_emits_immediately() -> None:
    b, _, out = make_batcher(30)
    b.add([ev("datasets/intel/a/1.jpg"), ev("datasets/intel/a/2.jpg")])
    assert out == []
    b.add([ev("datasets/intel/_READY")])
    assert len(out) == 1 and out[0]["payload"]["count"] == 2 and out[0]["payload"]["reason"] == "ready marker"
    assert b.pending == 0


def test_a_batch_being_emitted_still_counts_as_pending() -> None:
    """``pending == 0`` must mean every batch taken is accounted for (emitted, a duplicate or requeued): the health
    counters are read while another thread is sending, and a reader must never see 'nothing pending, nothing sent'."""
    sending, release, out = threading.Event(), threading.Event(), []

    def slow_emit(event: dict) -> None:
        sending.set()
        release.wait(10)
        out.append(event)

    b = Batcher(BridgeConfig(token=TOKEN, quiet_seconds=30), slow_emit)
    b.add([ev("datasets/intel/a/1.jpg")])
    worker = threading.Thread(target=b.add, args=([ev("datasets/intel/_READY")],))
    worker.start()
    assert sending.wait(10)
    assert (b.pending, b.emitted) == (1, 0)
    release.set()
    worker.join(10)
    assert (b.pending, b.emitted, len(out)) == (0, 1, 1)


def test_separate_roots_emit_separately() -> None:
    b, clock, out = make_batcher(5)
    b.add([ev("datasets/a/x/1.jpg"), ev("datasets/b/x/1.jpg"), ev("datasets/a/x/2.jpg")])
    clock.advance(3)
    b.add([ev("datasets/b/_READY")])
    assert [e["payload"]["prefix"] for e in out] == ["datasets/b/"]
    clock.advance(5)
    b.tick()
    assert sorted(e["payload"]["prefix"] for e in out) == ["datasets/a/", "datasets/b/"]
    assert {e["payload"]["prefix"]: e["payload"]["count"] for e in out} == {"datasets/a/": 2, "datasets/b/": 1}


def test_max_wait_fires_during_a_slow_trickle_and_keys_are_capped() -> None:
    clock, out = FakeClock(), []
    b = Batcher(BridgeConfig(token=TOKEN, quiet_seconds=10, max_wait_seconds=60), out.append, clock=clock)
    for i in range(2500):
        b.add([ev(f"datasets/a/{i}.jpg")])
        clock.advance(1 / 32)  # 78 s in all, never quiet for 10 s
        b.tick()
    assert len(out) == 1  # at 60 s
    assert out[0]["payload"]["count"] == 1920 and len(out[0]["payload"]["keys"]) == KEY_SAMPLE  # memory bound
    assert b.peak_keys_held == KEY_SAMPLE


def test_failed_emission_is_retried() -> None:
    clock, out, fail = FakeClock(), [], [True]

    def emit(event: dict) -> None:
        if fail[0]:
            raise EmitError("Prefect down")
        out.append(event)

    b = Batcher(BridgeConfig(token=TOKEN, quiet_seconds=1), emit, clock=clock)
    b.add([ev("datasets/a/1.jpg")])
    clock.advance(2)
    assert b.tick() == 0 and b.emit_failures == 1 and b.pending == 1
    b.add([ev("datasets/a/2.jpg")])  # arrives while the batch waits to be retried: merged
    fail[0] = False
    clock.advance(0.5)
    assert b.tick() == 0  # still inside the retry delay
    clock.advance(3)
    assert b.tick() == 1 and out[0]["payload"]["count"] == 2 and b.pending == 0


def test_batcher_is_thread_safe() -> None:
    b, clock, out = make_batcher(0)

    def worker(n: int) -> None:
        for i in range(200):
            b.add([ev(f"datasets/r{n % 3}/{n}-{i}.jpg")])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clock.advance(1)
    b.tick()
    assert sum(e["payload"]["count"] for e in out) == 1200
    assert sorted(e["payload"]["prefix"] for e in out) == ["datasets/r0/", "datasets/r1/", "datasets/r2/"]


def test_dataset_event_and_polling_diff() -> None:
    cfg = polling_config("b", "datasets/")
    e = dataset_event(cfg, "b", "datasets/x/", ["datasets/x/1.jpg", "datasets/x/1.jpg"])
    assert e["payload"]["count"] == 1 and e["resource"]["prefect.resource.id"] == "scene.dataset.b/datasets/x/"
    old = {"datasets/x/1.jpg": "a", "datasets/y/1.jpg": "a", "datasets/z/1.jpg": "a"}
    new = {"datasets/x/1.jpg": "a", "datasets/y/1.jpg": "b", "datasets/w/1.jpg": "a"}
    assert changed_roots(cfg, old, new) == {"datasets/w/": ["datasets/w/1.jpg"], "datasets/y/": ["datasets/y/1.jpg"]}
    assert changed_roots(cfg, new, new) == {}


def test_emit_prefect_event_names_the_problem() -> None:
    with pytest.raises(EmitError, match="PREFECT_API_URL"):
        emit_prefect_event("", {"event": "x", "resource": {"prefect.resource.id": "y"}})
    with pytest.raises(EmitError, match=r"prefect\.resource\.id"):
        emit_prefect_event("http://127.0.0.1:9/api", {"event": "x", "resource": {}})
    with pytest.raises(EmitError, match="cannot connect"):
        emit_prefect_event("http://127.0.0.1:9/api", {"event": "x", "resource": {"prefect.resource.id": "y"}},
                           timeout=2)


# ------------------------------------------------------------------------------------------- HTTP server


@pytest.fixture
def bridge() -> Iterator[tuple[BridgeServer, list[dict]]]:
    out: list[dict] = []
    server = serve(BridgeConfig(token=TOKEN, quiet_seconds=0.3, max_body_bytes=4096), port=0, emit=out.append)
    yield server, out
    server.stop()


def health(server: BridgeServer, token: str | None = TOKEN) -> dict[str, Any]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", "/health", headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def test_server_rejects_bad_token_oversized_and_malformed(bridge: tuple[BridgeServer, list[dict]],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    server, _ = bridge
    caplog.set_level("INFO", logger="scene.events")
    body = minio_body("datasets/a/x/1.jpg")
    assert post(server, body, token=None)[0] == 401
    assert post(server, body, token="wrong")[0] == 401
    assert post(server, body, token=TOKEN + "x")[0] == 401
    assert post(server, b"x" * 10, length=10 * 1024 * 1024)[0] == 413  # announced, never read
    status, answer = post(server, b"{broken")
    assert status == 400 and "not JSON" in answer["error"]
    assert post(server, b'{"Records": [{"eventName": 1}]}')[0] == 400
    assert post(server, body, path="/elsewhere")[0] == 404
    stats = health(server)
    assert stats["received"] == 7 and stats["rejected"] == 7 and stats["accepted"] == 0
    assert TOKEN not in caplog.text
    assert "missing or wrong bearer token" in caplog.text and "over the 4096-byte limit" in caplog.text


def test_server_accepts_and_batches(bridge: tuple[BridgeServer, list[dict]]) -> None:
    server, out = bridge
    for i in range(5):
        status, answer = post(server, minio_body(f"datasets/a/x/{i}.jpg"))
        assert (status, answer) == (200, {"accepted": 1, "ignored": 0})
    assert post(server, minio_body("other/a/x/1.jpg"))[1] == {"accepted": 0, "ignored": 1}
    assert post(server, aws_body("datasets/b/1.jpg"), path="/")[0] == 200
    deadline = time.monotonic() + 10
    while len(out) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {e["payload"]["prefix"]: e["payload"]["count"] for e in out} == {"datasets/a/": 5, "datasets/b/": 1}
    stats = health(server)
    assert (stats["received"], stats["accepted"], stats["objects"], stats["ignored"]) == (7, 7, 6, 1)
    assert (stats["emitted"], stats["pending"]) == (2, 0)


def test_health_reveals_nothing_without_the_token(bridge: tuple[BridgeServer, list[dict]]) -> None:
    server, _ = bridge
    assert post(server, minio_body("datasets/a/x/1.jpg"))[0] == 200
    assert health(server, token=None) == {"status": "ok"}
    assert health(server, token="wrong") == {"status": "ok"}
    stats = health(server)
    assert stats["status"] == "ok" and stats["received"] == 1 and stats["pending_roots"] == ["scene-data/datasets/a/"]
    assert bridge_stats(server.url, TOKEN)["received"] == 1
    with pytest.raises(EmitError, match="token was not accepted"):
        bridge_stats(server.url, "wrong")


def test_server_survives_garbage(bridge: tuple[BridgeServer, list[dict]]) -> None:
    import socket

    server, out = bridge
    junk = [b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"A" * 70000 + b"\r\n\r\n",
            b"POST /notify HTTP/1.1\r\nContent-Length: -5\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
            b"POST /notify HTTP/1.1\r\nContent-Length: 100\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\n\r\nshort", b""]
    for data in junk:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):  # the server may answer or just close
                sock.recv(65536)
    for _ in range(20):
        post(server, bytes(range(256)) * 4)
    assert post(server, minio_body("datasets/c/_READY"))[0] == 200
    assert health(server)["emitted"] == 1 and out[0]["payload"]["prefix"] == "datasets/c/"


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_requires_token_and_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from scene.cli.main import CliError

    args = events_parser().parse_args(["events", "serve", "--port", "0", "--quiet-seconds", "2"])
    assert (args.port, args.quiet_seconds, args.bucket, args.prefix) == (0, 2.0, None, None)
    monkeypatch.delenv("SCENE_EVENTS_TOKEN", raising=False)
    with pytest.raises(CliError, match="SCENE_EVENTS_TOKEN is not set"):
        args.func(args)
    monkeypatch.setenv("SCENE_EVENTS_TOKEN", TOKEN)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(CliError, match="PREFECT_API_URL is not set"):
        args.func(args)


def test_cli_serves_until_sigterm() -> None:
    import os
    import re
    import signal
    import subprocess
    import sys

    code = ("import sys; from tests.support.bridge import events_parser; a = events_parser().parse_args(sys.argv[1:]); "
            "a.func(a)")
    env = {**os.environ, "SCENE_EVENTS_TOKEN": TOKEN, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    proc = subprocess.Popen([sys.executable, "-c", code, "events", "serve", "--port", "0", "--prefix", "data"],
                            env=env, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stderr is not None
        line = ""
        while "POST http" not in line:
            line = proc.stderr.readline()
            assert line, "the bridge exited before it listened"
        url = re.search(r"POST (http://\S+)/notify", line).group(1)  # type: ignore[union-attr]
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/health", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["received"] == 0
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert TOKEN not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------ idempotence, polling, probes


def test_a_retried_batch_keeps_its_event_id_and_a_grown_one_gets_a_new_id() -> None:
    clock, sent, fail = FakeClock(), [], [True]

    def emit(event: dict) -> None:
        sent.append(event["id"])
        if fail[0]:
            raise EmitError("reply lost")

    b = Batcher(BridgeConfig(token=TOKEN, quiet_seconds=1), emit, clock=clock)
    b.add([ev("datasets/a/1.jpg")])
    clock.advance(2)
    b.tick()
    clock.advance(3)
    fail[0] = False
    assert b.tick() == 1 and len(sent) == 2 and sent[0] == sent[1]  # the retry is the same event
    fail[0] = True
    b.add([ev("datasets/a/2.jpg")])
    clock.advance(2)
    b.tick()
    b.add([ev("datasets/a/3.jpg")])  # new objects while the batch waits: the merged batch is a new event
    fail[0] = False
    clock.advance(3)
    assert b.tick() == 1 and sent[3] != sent[2] and len(set(sent)) == 3


def test_watch_state_advances_only_for_delivered_events() -> None:
    from scene.ops.polling import announce

    cfg = polling_config("b", "datasets/")
    old = {"datasets/x/1.jpg": "e1"}
    new = {"datasets/x/1.jpg": "e1", "datasets/x/2.jpg": "e2", "datasets/y/1.jpg": "e3"}

    def emit_y_fails(event: dict) -> None:  # a real delivery attempt for y: nothing listens on port 9
        if event["payload"]["prefix"] == "datasets/y/":
            emit_prefect_event("http://127.0.0.1:9/api", event, timeout=2)

    state, done, failed = announce(cfg, old, new, emit_y_fails)
    assert done == ["s3://b/datasets/x/"] and list(failed) == ["datasets/y/"]
    assert "cannot connect" in failed["datasets/y/"]
    assert state == {"datasets/x/1.jpg": "e1", "datasets/x/2.jpg": "e2"}  # y not advanced
    again, done, failed = announce(cfg, state, new, lambda e: None)
    assert done == ["s3://b/datasets/y/"] and not failed and again == new  # the next poll re-emits y only


def test_server_ignores_path_traversal_keys(bridge: tuple[BridgeServer, list[dict]]) -> None:
    server, out = bridge
    for key in ("datasets/../secrets/a.jpg", "datasets/a/../../etc/x.jpg", "datasets//a.jpg", "datasets/./a/b.jpg"):
        assert post(server, aws_body(key))[1] == {"accepted": 0, "ignored": 1}, key
    assert post(server, minio_body("datasets/../x/1.jpg"))[1] == {"accepted": 0, "ignored": 1}  # URL-encoded
    time.sleep(0.6)
    assert out == [] and health(server)["objects"] == 0


# ----------------------------------------------------------------- one change, one event; durable delivery


def test_a_resend_of_the_same_keys_is_one_event_with_the_same_id() -> None:
    """A gateway resend (lost reply) that lands while the batch is being emitted forms a batch of its own, merged
    into the failed one: it adds no count and keeps the id; a resend after delivery is not sent again (old code:
    the merge added the counts and cleared the id, so the retry was a second event: two retrains)."""
    clock, sent, fail = FakeClock(), [], [True]
    burst = [ev("datasets/a/1.jpg"), ev("datasets/a/2.jpg")]

    def emit(event: dict) -> None:
        sent.append(event)
        if fail[0]:
            b.add(burst)  # the same notifications again, while this POST is in flight
            raise EmitError("reply lost")

    b = Batcher(BridgeConfig(token=TOKEN, quiet_seconds=1), emit, clock=clock)
    b.add(burst)
    clock.advance(2)
    assert b.tick() == 0 and len(sent) == 1 and b.pending == 1  # delivered, but the reply was lost
    fail[0] = False
    clock.advance(5)
    assert b.tick() == 1
    assert [e["id"] for e in sent] == [sent[0]["id"]] * 2  # the retry is the same event
    assert sent[-1]["payload"]["count"] == 2 and sent[-1]["payload"]["change"] == sent[0]["id"]
    b.add(burst)  # once more, after delivery: the same change, not sent again
    clock.advance(2)
    assert b.tick() == 0 and b.duplicates == 1 and b.pending == 0
    assert len(sent) == 2


def test_every_announcer_gives_one_state_the_same_id() -> None:
    """The bridge (fingerprint of the root's listing), the polling sensor and the reconcile name one state of a
    root with one id; another state gets another id."""
    from scene.ops.polling import announce, root_change_id

    listing = {"datasets/a/x/1.jpg": "e1", "datasets/a/x/2.jpg": "e2", "datasets/b/x/1.jpg": "e3"}
    cfg = BridgeConfig(token=TOKEN, quiet_seconds=1)
    clock, out = FakeClock(), []
    b = Batcher(cfg, out.append, clock=clock,
                fingerprint=lambda bucket, root: content_fingerprint(root_objects(listing, root)))
    b.add([ev("datasets/a/x/2.jpg")])
    clock.advance(2)
    b.tick()
    polled: list[dict] = []
    announce(polling_config("scene-data", "datasets/"), {"datasets/a/x/1.jpg": "e1"}, listing, polled.append)
    assert out[0]["id"] == polled[0]["id"] == root_change_id(cfg, "datasets/a/", listing)
    assert root_change_id(cfg, "datasets/a/", {**listing, "datasets/a/x/3.jpg": "e4"}) != out[0]["id"]
    assert root_change_id(cfg, "datasets/a/", {**listing, "datasets/a/x/2.jpg": "e5"}) != out[0]["id"]


def test_bridge_persists_before_answering_and_replays_after_a_kill(tmp_path: Path) -> None:
    """Objects accepted with a 200 survive a bridge that dies before emitting: the next bridge on the same store
    replays and emits them once; delivered rows are dropped."""
    from scene.ops.event_store import EventStore

    db = tmp_path / "events.sqlite"
    cfg = BridgeConfig(token=TOKEN, quiet_seconds=60)
    out: list[dict] = []
    first = serve(cfg, port=0, emit=out.append, tick_seconds=0.05, store=str(db))
    try:
        assert post(first, aws_body("datasets/a/x/1.jpg", "datasets/a/x/2.jpg"))[0] == 200
    finally:
        first.stop()  # no flush: as if killed (the batch was only pending)
    assert out == [] and EventStore(db).counts() == {"objects": 2, "unconfirmed": 0}
    second = serve(BridgeConfig(token=TOKEN, quiet_seconds=0.2), port=0, emit=out.append, tick_seconds=0.05,
                   store=str(db))
    try:
        deadline = time.monotonic() + 10  # emitted and recorded as delivered: nothing pending any more
        while not (out and second.batcher.pending == 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(out) == 1 and out[0]["payload"]["count"] == 2
        assert second.store is not None and second.store.counts() == {"objects": 0, "unconfirmed": 0}
    finally:
        second.stop()


def test_a_delivered_event_without_a_run_is_sent_again_under_a_new_id_naming_the_same_change(tmp_path: Path
                                                                                          ) -> None:
    """The server remembers processed ids, so a resend (no run appeared: restart, prefect deploy) needs a new
    id; the change it names stays, and a confirmed change is forgotten."""
    runs: set[str] = set()
    out: list[dict] = []
    server = serve(BridgeConfig(token=TOKEN, quiet_seconds=0.1), port=0, emit=out.append, tick_seconds=0.05,
                   store=str(tmp_path / "e.sqlite"), confirm=lambda changes: runs & set(changes),
                   confirm_after=3600)
    try:
        post(server, aws_body("datasets/a/x/1.jpg"))
        deadline = time.monotonic() + 10
        while not out and time.monotonic() < deadline:
            time.sleep(0.05)
        (first,) = out
        assert server.confirm_pass() == {"confirmed": 0, "resent": 0, "given_up": 0}  # not due yet
        assert server.confirm_pass(now=time.time() + 3601) == {"confirmed": 0, "resent": 1, "given_up": 0}
        again = out[-1]
        assert again["id"] != first["id"] and again["payload"]["change"] == first["id"] == first["payload"]["change"]
        runs.add(first["id"])  # the trigger created a run with change_id = the change
        assert server.confirm_pass()["confirmed"] == 1 and server.store.counts()["unconfirmed"] == 0
    finally:
        server.stop()
