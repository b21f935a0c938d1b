"""Security probes on the shared event stack: loopback-only listeners; no secret in logs, artifacts or status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scene.ops import http

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


def test_no_secret_in_logs_artifacts_or_status(event_stack: dict[str, Any]) -> None:
    state, env = event_stack["state"], event_stack["env"]
    creds = json.loads((state / "credentials.json").read_text())
    secrets = [creds["secret_key"], creds["events_token"]]
    status = subprocess.run([str(Path(sys.executable).with_name("scene")), "stack", "status", "--state", str(state)],
                            capture_output=True, text=True, timeout=60)
    texts = {"scene stack status": status.stdout + status.stderr}
    texts.update({str(p): p.read_text(errors="replace") for p in (state / "logs").glob("*.log")})
    code, artifacts = http.call("POST", env["PREFECT_API_URL"] + "/artifacts/filter", {"limit": 200})
    assert code == 200
    texts["Prefect artifacts"] = json.dumps(artifacts)
    code, logs = http.call("POST", env["PREFECT_API_URL"] + "/logs/filter", {"limit": 200})
    texts["Prefect run logs"] = json.dumps(logs)
    assert len(texts) >= 5, list(texts)
    leaks = [where for where, text in texts.items() for s in secrets if s in text]
    assert leaks == []
