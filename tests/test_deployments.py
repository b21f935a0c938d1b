"""prefect.yaml: which pool each deployment runs on and what the retraining schedule retrains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deployments() -> dict[tuple[str, str], dict[str, Any]]:
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    flows = {"train_all": "train-all", "train_backbone": "train-backbone", "retrain": "retrain", "watch": "watch",
             "predict": "predict"}
    return {(flows[d["entrypoint"].rsplit(":", 1)[1]], d["name"]): d for d in doc["deployments"]}


def test_gpu_orchestrator_waits_on_the_cpu_pool_and_backbones_train_on_gpus(deployments: dict) -> None:
    orchestrator, trainer = deployments[("train-all", "gpu")], deployments[("train-backbone", "gpu")]
    assert orchestrator["work_pool"]["name"] == "default"  # it only validates, dispatches and waits
    assert trainer["work_pool"]["name"] == "gpu"
    params = orchestrator["parameters"]
    assert params["dispatch"] == "deployments" and params["deployment"] == "train-backbone/gpu"
    assert 0 < params["start_timeout_s"] < params["dispatch_timeout_s"]


def test_retrain_has_no_default_dataset_so_the_schedule_retrains_champions(deployments: dict) -> None:
    retrain = deployments[("retrain", "default")]
    assert "data" not in (retrain.get("parameters") or {})
    for schedule in retrain["schedules"]:
        assert "data" not in (schedule.get("parameters") or {}), schedule
        assert schedule["parameters"]["only_if_changed"] is True
    (trigger,) = retrain["triggers"]
    assert trigger["parameters"]["data"] == "{{ event.payload.data }}"  # an event retrains the dataset it names
