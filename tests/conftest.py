"""Shared fixtures (tiny generated datasets, paths to the real data/weights) and the suite's tiers.

Tiers, in one session: the unit tests (no server) run first, then tests/faults (their own small infrastructure),
tests/integration (one stack for the package) and tests/events (one event stack for the package); tests/docker
last (deselected by ``make test``). Each stack is up only while its package runs.

``SCENE_TEST_STRICT=1`` (set by ``.ci/run``) turns every skip outside tests/docker into a failure: a CI machine
without ``../shared`` or without root for the tmpfs mounts fails instead of passing with less tested.

Under pytest-xdist (``-n 2 --dist loadgroup``) each stack package is one xdist group (so each stack starts once,
on one worker) and each other module is a group of its own (its module fixtures are built once); the stack
packages are scheduled first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SHARED

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

INTEL = SHARED / "data" / "intel" / "seg_train"
MOBILENET = SHARED / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"
TESTS = Path(__file__).resolve().parent
LAST = {"test_secrets.py"}  # tests/integration: scans what every other test there left on the stack
# unit tests over ~5 s on a 2-core machine (measured with --durations=0): make test-unit leaves them out
SLOW_MODULES: set[str] = set()
SLOW_TESTS: set[str] = set()
# package -> (tier without xdist, tier under xdist, marker added to each of its tests)
PACKAGES = {"faults": (1, 2, "faults"), "integration": (2, 0, "integration"), "events": (3, 1, "integration"),
            "docker": (4, 4, "docker")}


def strict() -> bool:
    """Whether skips outside tests/docker fail the run (``SCENE_TEST_STRICT=1``, as in CI)."""
    return os.environ.get("SCENE_TEST_STRICT", "") not in ("", "0")


def _package(item: pytest.Item) -> str | None:
    rel = Path(item.path).resolve().relative_to(TESTS)
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in PACKAGES else None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first, then one package per stack (a stable sort: modules stay contiguous); xdist groups."""
    xdist = bool(getattr(config.option, "numprocesses", None)) or "PYTEST_XDIST_WORKER" in os.environ
    for item in items:
        package = _package(item)
        if package is not None:
            item.add_marker(getattr(pytest.mark, PACKAGES[package][2]))
            item.add_marker(pytest.mark.slow)  # a stack, a killed process or a gateway of its own
        elif Path(item.path).name in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if xdist:
            group = package if package in ("integration", "events") else Path(item.path).stem
            item.add_marker(pytest.mark.xdist_group(group))
    column = 1 if xdist else 0
    items.sort(key=lambda item: (PACKAGES[p][column] if (p := _package(item)) else (3 if xdist else 0),
                                 Path(item.path).name in LAST))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Under ``SCENE_TEST_STRICT=1`` a skipped test outside tests/docker is reported as failed, with its reason."""
    report = yield
    if report.skipped and strict() and item.get_closest_marker("docker") is None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"SCENE_TEST_STRICT=1: this test may not be skipped here ({reason})"
    return report


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six classes × 12 generated 48-px images in ``<root>/<class>/``."""
    from scene.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", 12, size=48, seed=3)


@pytest.fixture(scope="session")
def kaggle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Kaggle layout: ``seg_train/seg_train/<class>`` and ``seg_test/seg_test/<class>``."""
    from scene.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("kaggle") / "archive"
    make_synthetic(root / "seg_train" / "seg_train", 8, size=40, seed=4)
    make_synthetic(root / "seg_test" / "seg_test", 3, size=40, seed=5)
    return root


@pytest.fixture(scope="session")
def intel_dir() -> Path:
    if not INTEL.is_dir():
        pytest.skip(f"real Intel photos not present at {INTEL}")
    return INTEL


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    if not MOBILENET.is_file():
        pytest.skip(f"offline MobileNetV2 ImageNet weights not present at {MOBILENET}")
    return MOBILENET
