"""Processes the tests start."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, grace: float = 30.0) -> int:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session=True``); SIGKILL it after
    ``grace`` seconds (a Prefect worker finishing its shutdown on a loaded machine can take longer); its exit code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.wait()
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)
