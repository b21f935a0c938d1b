"""No secret of the session stack leaks, scanned after the package's trainings, retrains and dispatches ran.

Ordered last in tests/integration (tests/conftest.py), so the Prefect API holds every flow run, artifact (summaries,
tables, presigned links) and log the package's tests produced, and the buckets every run's reports and records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.secrets import TEXT_SUFFIXES, api_records, leaks, secrets_of, stack_status, text_objects

pytestmark = pytest.mark.integration


def test_no_secret_in_the_records_of_the_runs_that_trained(stack: Any, env: dict[str, str], s3: Any) -> None:
    state = Path(stack.state_dir)
    found = api_records(env, pages=50)  # up to 10,000 of each: the records of the whole package
    assert all(found[k] for k in ("deployments", "flow runs", "artifacts", "logs")), \
        {k: len(v) for k, v in found.items()}
    kinds = {a.get("type") for a in found["artifacts"]}
    assert {"markdown", "table"} <= kinds, kinds  # summaries and comparison tables: what trainings write
    objects = text_objects(s3, [env["SCENE_ARTIFACT_BUCKET"], env["SCENE_DATA_BUCKET"]], TEXT_SUFFIXES)
    assert any(k.endswith("/metrics.json") for k in objects) and any(k.endswith("/report.html") for k in objects)
    texts = {what: json.dumps(items) for what, items in found.items()}
    texts.update({f"service log {p.name}": p.read_text(errors="replace") for p in (state / "logs").glob("*.log")})
    texts.update(objects)
    texts["scene stack status"] = stack_status(state)
    assert leaks(secrets_of(state), texts) == []
