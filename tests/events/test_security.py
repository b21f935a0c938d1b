"""Security probes on the shared event stack: loopback-only listeners; the Prefect API needs its auth string;
out-of-scope location parameters are refused before anything is written; no secret in work pools, flow-run
parameters, artifacts, logs, objects or status (tests/integration/test_secrets.py scans the session stack after its
trainings too)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from scene.ops import http
from tests.support.secrets import api_records, leaks, secrets_of, stack_status, text_objects
from tests.support.stackenv import stack_environ

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _group(pid: int) -> list[int]:
    """The processes of a service's process group (the service and what it started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pid:  # pgrp
                out.append(int(entry.name))
    return out


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket the processes hold (IPv4 and IPv6)."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                addr, port = parts[1].split(":")
                raw = bytes.fromhex(addr)
                ip = ".".join(str(b) for b in raw[::-1]) if width == 8 else raw.hex()
                found.add((ip, int(port, 16)))
    return found


def test_every_service_listens_on_loopback_only(event_stack: dict[str, Any]) -> None:
    state = event_stack["state"]
    pids = [json.loads(p.read_text())["pid"] for p in (state / "pids").glob("*.pid")]
    assert len(pids) >= 4  # s3, prefect, workers, events
    sockets = _listening([p for pid in pids for p in _group(pid)])
    cfg = json.loads((state / "stack.json").read_text())
    ports = {port for _, port in sockets}
    assert {cfg["s3_port"], cfg["prefect_port"], cfg["events_port"]} <= ports, sockets
    assert all(ip == "127.0.0.1" for ip, _ in sockets), sockets  # no 0.0.0.0, no IPv6 wildcard


# --------------------------------------------------------------------------------- authenticated Prefect API


def _auth(env: dict[str, str]) -> dict[str, str]:
    return http.auth_headers(auth_string=env["PREFECT_API_AUTH_STRING"])


def test_the_prefect_api_refuses_unauthenticated_calls(event_stack: dict[str, Any]) -> None:
    """Without the auth string (or with a wrong one) every API call is 401; only the health probe is open."""
    api = event_stack["env"]["PREFECT_API_URL"]
    wrong = http.auth_headers(auth_string="scene:not-the-string")
    for path, body in (("/flow_runs/filter", {}), ("/work_pools/filter", {}), ("/deployments/filter", {})):
        assert http.call("POST", api + path, body, headers={"Authorization": ""})[0] == 401, path
        assert http.call("POST", api + path, body, headers=wrong)[0] == 401, path
        assert http.call("POST", api + path, body, headers=_auth(event_stack["env"]))[0] == 200, path
    assert http.call("GET", api + "/health", headers={"Authorization": ""}) == (200, True)
    creds = json.loads((event_stack["state"] / "credentials.json").read_text())
    assert (event_stack["state"] / "credentials.json").stat().st_mode & 0o077 == 0
    assert creds["prefect_auth_string"] == event_stack["env"]["PREFECT_API_AUTH_STRING"]


# ------------------------------------------------------------------------ scoped location parameters


def _listing(s3: Any, bucket: str) -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _refused(state: Any) -> str:
    assert state.is_failed(), state
    with pytest.raises(ValueError) as err:
        state.result()
    return str(err.value)


def test_out_of_scope_parameters_are_refused_before_anything_is_written(event_stack: dict[str, Any]) -> None:
    """Each location parameter aimed at the registry or another run fails the flow run and writes nothing."""
    from flows.extract_chunk import extract_chunk
    from flows.predict import predict, predict_chunk
    from flows.read_chunk import read_chunk
    from flows.train_all import train_all
    from flows.train_backbone import train_backbone
    from flows.watch import watch

    env, s3 = event_stack["env"], event_stack["s3"]
    art, data = env["SCENE_ARTIFACT_BUCKET"], f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}"
    before = {b: _listing(s3, b) for b in (art, env["SCENE_DATA_BUCKET"])}
    with stack_environ(env):
        refusals = {
            "predict out": _refused(predict(data=data, out=f"s3://{art}/models/champions/x.json", return_state=True)),
            "predict out (run)": _refused(predict(data=data, out=f"s3://{art}/runs/x/predictions.csv",
                                                  return_state=True)),
            "watch state_key": _refused(watch(prefix_uri=data, state_key="models/registry.json", return_state=True)),
            "train-backbone run_prefix_uri": _refused(train_backbone(
                backbone="mobilenetv2", data=data + "x/", run_prefix_uri=f"s3://{art}/runs/another-run/",
                return_state=True)),
            "train-all data": _refused(train_all(data=f"s3://{art}/models/", return_state=True)),
            "train-all test": _refused(train_all(data=data + "x/", test=f"s3://{art}/runs/", return_state=True)),
            "predict-chunk folder": _refused(predict_chunk(model=f"s3://{art}/m/model.keras", folder=f"s3://{art}/models/",
                                                           chunk=0, chunks=2, return_state=True)),
            "extract-chunk feature_cache": _refused(extract_chunk(
                backbone="mobilenetv2", manifest_uri=f"s3://{art}/runs/x/manifest.csv", chunk=0, chunks=2,
                feature_cache=f"s3://{art}/runs/x/", return_state=True)),
            "read-chunk folder": _refused(read_chunk(data=data, folder=f"s3://{art}/models/", chunk=0, chunks=2,
                                                     return_state=True)),
            "read-chunk data": _refused(read_chunk(data=f"s3://{art}/runs/", folder=f"s3://{art}/runs/x/reading",
                                                   chunk=0, chunks=2, return_state=True)),
        }
    for what, message in refusals.items():
        assert "use a location under" in message or "pass sensors/" in message, (what, message)
    assert {b: _listing(s3, b) for b in before} == before


# ----------------------------------------------------------------------------------- no secret anywhere


def _small_flows(event_stack: dict[str, Any]) -> None:
    """Flow runs that log, write an artifact, a flow-run parameter set and an S3 object (none needs a worker)."""
    from flows.train_backbone import train_backbone
    from flows.watch import watch

    env = event_stack["env"]
    empty = f"s3://{env['SCENE_DATA_BUCKET']}/{env['SCENE_DATA_PREFIX']}security-empty-{uuid.uuid4().hex[:8]}/"
    with stack_environ(env):
        assert watch(prefix_uri=empty, state_key=f"sensors/security-{uuid.uuid4().hex[:8]}.json",
                     return_state=True).is_completed()  # writes its state object
        assert train_backbone(backbone="mobilenetv2", data=empty, return_state=True).is_failed()  # summary artifact


def test_no_secret_in_pools_runs_artifacts_logs_objects_or_status(event_stack: dict[str, Any]) -> None:
    """After flows ran: the S3 secret keys, the bridge token and the API auth string appear in no work-pool
    template, deployment, flow-run parameter, artifact, log, S3 object, service log or `scene stack status`."""
    _small_flows(event_stack)
    state, env, s3 = event_stack["state"], event_stack["env"], event_stack["s3"]
    found = api_records(env)
    assert all(found[k] for k in ("work pools", "deployments", "flow runs", "artifacts", "logs")), \
        {k: len(v) for k, v in found.items()}
    assert any(r.get("parameters") for r in found["flow runs"])
    objects = text_objects(s3, [env["SCENE_ARTIFACT_BUCKET"], env["SCENE_DATA_BUCKET"]])
    assert any(k.split("/", 3)[3].startswith("sensors/security-") for k in objects), list(objects)
    texts = {what: json.dumps(items) for what, items in found.items()}
    texts.update({f"service log {p.name}": p.read_text(errors="replace") for p in (state / "logs").glob("*.log")})
    texts.update(objects)
    texts["scene stack status"] = stack_status(state)
    assert leaks(secrets_of(state), texts) == []


# ----------------------------------------------------------------------------- least-privilege identities


def _can(s3: Any, call: str, **kwargs: Any) -> bool:
    """Whether ``s3.<call>(**kwargs)`` is allowed (AccessDenied/403: no; a missing key still counts as allowed)."""
    try:
        getattr(s3, call)(**kwargs)
    except Exception as err:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "403"):
            return False
        if code in ("NoSuchKey", "404"):
            return True
        raise
    return True


def test_each_workload_identity_can_do_only_its_part(event_stack: dict[str, Any]) -> None:
    """The links identity reads and never writes; the bridge lists and never reads images nor writes the
    registry; the workers never write the data; none of them is the root key. The workers and the bridge run
    with their own identity."""
    import boto3.session

    state, env = event_stack["state"], event_stack["env"]
    creds = json.loads((state / "credentials.json").read_text())
    data, art, prefix = env["SCENE_DATA_BUCKET"], env["SCENE_ARTIFACT_BUCKET"], env["SCENE_DATA_PREFIX"]
    event_stack["s3"].put_object(Bucket=data, Key=f"{prefix}security-ids/a/x.jpg", Body=b"img")
    event_stack["s3"].put_object(Bucket=art, Key="runs/security-ids/result.json", Body=b"{}")

    def client(role: str) -> Any:
        keys = creds["identities"][role]
        assert keys["access_key"] != creds["access_key"] and keys["secret_key"] != creds["secret_key"]
        return boto3.session.Session().client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                                              region_name=env["AWS_DEFAULT_REGION"],
                                              aws_access_key_id=keys["access_key"],
                                              aws_secret_access_key=keys["secret_key"])

    image = {"Bucket": data, "Key": f"{prefix}security-ids/a/x.jpg"}
    result = {"Bucket": art, "Key": "runs/security-ids/result.json"}
    champion = {"Bucket": art, "Key": "models/champions/security-probe.json", "Body": b"{}"}
    links, bridge, workers = client("scene-links"), client("scene-bridge"), client("scene-workers")
    assert _can(links, "get_object", **result) and _can(links, "get_object", **image)
    for target in (champion, {**result, "Body": b"x"}, {**image, "Body": b"x"}):
        assert not _can(links, "put_object", **target), target["Key"]
    assert not _can(links, "get_object", Bucket=art, Key="models/registry.json")
    assert _can(bridge, "list_objects_v2", Bucket=data, Prefix=prefix)
    assert not _can(bridge, "get_object", **image) and not _can(bridge, "put_object", **champion)
    assert not _can(workers, "put_object", **{**image, "Body": b"x"})
    assert _can(workers, "get_object", **image) and _can(workers, "put_object", Bucket=art,
                                                         Key="runs/security-ids/w.json", Body=b"{}")
    for service, role in (("worker-default", "scene-workers"), ("events", "scene-bridge")):
        pid = json.loads((state / "pids" / f"{service}.pid").read_text())["pid"]
        environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode(
            errors="replace").split("\0") if "=" in item)
        assert environ["AWS_ACCESS_KEY_ID"] == creds["identities"][role]["access_key"], service
        assert creds["secret_key"] not in environ.values(), service
