"""Prefect queries and deployments the stack tests share (Prefect's own client, the API of the entered stack)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scene.data import storage
from tests.support import REPO


def deploy_on_default_pool(flow_name: str, entrypoint: str, name: str, *, pool: str = "default",
                           job_variables: dict[str, Any] | None = None) -> str:
    """A deployment of ``flow_name`` on ``pool`` (default: the `default` pool) whose runs start in this checkout (the
    session stack's process workers run them); returns ``"<flow>/<name>"`` for ``run_deployment``."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_deployment(flow_id=client.create_flow_from_name(flow_name), name=name, work_pool_name=pool,
                                 entrypoint=entrypoint, job_variables=job_variables or {}, pull_steps=[
                                     {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}])
    return f"{flow_name}/{name}"


def prefect_deploy(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> None:
    """``prefect --no-prompt deploy <args>`` from the repository (prefect.yaml); fails with its output."""
    run = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", *args], cwd=REPO,
                         env={**os.environ, **(env or {}), "SCENE_REPO_DIR": str(REPO)}, capture_output=True,
                         text=True, timeout=timeout, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def wait_final(run_ids: list[Any], timeout: float) -> dict[Any, Any]:
    """Each flow run once its state is final (polled every 0.5 s); fails naming the runs still not final."""
    from prefect.client.orchestration import get_client

    deadline, done, last = time.monotonic() + timeout, {}, {}
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and len(done) < len(run_ids):
            for run_id in (r for r in run_ids if r not in done):
                run = last[run_id] = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    done[run_id] = run
            time.sleep(0.5)
    missing = {r: last[r].state for r in run_ids if r not in done}
    assert not missing, f"flow runs not final after {timeout:.0f} s: {missing}"
    return done


def child_runs(flow_run_id: Any) -> list[Any]:
    """The flow runs whose parent task ran in ``flow_run_id`` (subflows and dispatched runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


def artifacts_of(flow_run_id: Any) -> list[Any]:
    """Every artifact of the flow run (its tasks' too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def assert_gated_against(s3: Any, challenger: Any, champion: Any, data: str) -> dict[str, Any]:
    """The challenger's stored ``decision.json``, checked against its champion: same dataset, and b, c, n_paired and
    the one-sided exact McNemar p recomputed here from both versions' stored ``test_predictions.csv``."""
    import pandas as pd
    import pytest
    from scipy.stats import binomtest

    stored = json.loads(storage.read_bytes(challenger.uri + "decision.json", s3))
    assert stored["champion"] == champion.version and stored["dataset"] == data
    mine, theirs = (pd.read_csv(io.BytesIO(storage.read_bytes(v.uri + "test_predictions.csv", s3)))
                    for v in (challenger, champion))
    paired = mine.merge(theirs, on="sha256", suffixes=("", "_champion"))
    assert len(paired) == len(mine) == len(theirs) > 0  # same data, same test split
    new_ok, old_ok = paired["correct"].to_numpy(bool), paired["correct_champion"].to_numpy(bool)
    b, c = int(np.sum(new_ok & ~old_ok)), int(np.sum(~new_ok & old_ok))
    assert (stored["b"], stored["c"], stored["n_paired"]) == (b, c, len(paired))
    p = binomtest(b, b + c, 0.5, alternative="greater").pvalue if b + c else 1.0
    assert stored["p_value"] == pytest.approx(p)
    return stored
