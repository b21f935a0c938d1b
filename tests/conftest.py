"""Shared fixtures: tiny generated datasets and paths to the real data/weights (tests skip without them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.event_stack"]  # the session's stack with the event bridge and deployments
SHARED = REPO.parent / "shared"
INTEL = SHARED / "data" / "intel" / "seg_train"
MOBILENET = SHARED / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"


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
