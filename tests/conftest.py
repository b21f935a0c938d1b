"""Shared fixtures (tiny generated datasets, paths to the real data/weights) and the suite's tiers.

Tiers, in one session (one process): the unit tests (no server) run first, then tests/faults (their own small
infrastructure), tests/integration (one stack for the package) and tests/events (one event stack for the package);
tests/docker last (deselected by ``make test``). Each stack is up only while its package runs.

``SCENE_TEST_STRICT=1`` (set by ``.ci/run``) turns every skip outside tests/docker into a failure: a CI machine
without ``../shared`` or without root for the tmpfs mounts fails instead of passing with less tested.

Under pytest-xdist (``-n 2 --dist loadscope``, as make test runs it) each module goes whole to one worker (its module
fixtures are built once), except tests/events, which goes whole to one worker (one event stack); the integration
modules are spread over both workers (each starts its own package stack), and the stack packages are scheduled
first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SHARED

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# exporting each trained model to OpenVINO costs 5-20 s of CPU per training here; tests/test_api.py and
# tests/integration/test_flows.py turn it on where they test it
os.environ.setdefault("SCENE_EXPORT", "none")

INTEL = SHARED / "data" / "intel" / "seg_train"
MOBILENET = SHARED / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"
TESTS = Path(__file__).resolve().parent
LAST = {"test_secrets.py"}  # tests/integration: scans what every other test there left on the stack
# under xdist, the unit modules that take longest go first (longest first: the worker that finishes its stack package
# early takes them, and no long module starts last while the other worker idles; seconds from a 2-core timeline)
LONG_UNIT_MODULES = ("test_train.py", "test_backbones.py", "test_real.py", "test_api.py", "test_cli.py",
                     "test_smoke.py", "test_gate_spending.py", "test_readme.py", "test_quiet_cli.py")
# unit tests over ~5 s on a 2-core machine (measured with --durations=0): make test-unit leaves them out
SLOW_MODULES = {"test_real.py", "test_smoke.py", "test_audit_real.py"}  # test_readme.py marks its one slow test
SLOW_TESTS = {
    "test_train_writes_models_and_comparison", "test_saved_model_that_is_not_the_feature_network_fails_the_run",
    "test_online_with_finetuning_keeps_batchnorm_frozen",
    "test_alpha_spent_over_repeated_gates_bounds_false_promotions",
    "test_features_match_keras_own_imagenet_graph", "test_bad_input_raises_a_scene_error_before_training",
    "test_cached_run_writes_every_artifact", "test_train_on_folder_classes_with_default_imagenet_weights",
    "test_test_metrics_come_from_the_saved_model", "test_tensorflow_start_up_noise_is_filtered_and_verbose_shows_it",
    "test_mirror_recipe_ships_a_mirror_invariant_model_scored_end_to_end",
    "test_refit_with_augmented_views_and_mirror_trains",
    "test_finetune_ensemble_ships_the_average_of_the_selection_and_the_refit_network",
    "test_random_init_extraction_in_another_process_builds_the_same_network", "test_random_init_builds_are_seeded",
    "test_cached_head_predictions_equal_the_full_model", "test_a_failing_backbone_raises_naming_it_with_what_finished",
    "test_refit_ships_a_head_trained_on_train_and_val_and_reports_held_out_val",
    "test_feature_cache_computes_only_new_images", "test_help_and_validate_write_nothing_to_stderr",
    "test_extracted_features_equal_on_openvino_and_tensorflow",
    "test_weight_averaging_ships_and_validates_the_average",
    "test_finetune_refit_ships_a_network_tuned_on_train_and_val_and_reports_held_out_val",
}
# package -> (tier without xdist, tier under xdist, marker added to each of its tests)
PACKAGES = {"faults": (1, 2, "faults"), "integration": (2, 0, "integration"), "events": (3, 1, "integration"),
            "docker": (4, 4, "docker")}


def strict() -> bool:
    """Whether skips outside tests/docker fail the run (``SCENE_TEST_STRICT=1``, as in CI)."""
    return os.environ.get("SCENE_TEST_STRICT", "") not in ("", "0")


def _package(item: pytest.Item) -> str | None:
    rel = Path(item.path).resolve().relative_to(TESTS)
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in PACKAGES else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Unit tests first, then one package per stack (a stable sort: modules stay contiguous); under xdist the stack
    packages first (they take longest), then the unit modules, the long ones first."""
    xdist = bool(getattr(config.option, "numprocesses", None)) or "PYTEST_XDIST_WORKER" in os.environ
    for item in items:
        package = _package(item)
        if package is not None:
            item.add_marker(getattr(pytest.mark, PACKAGES[package][2]))
            item.add_marker(pytest.mark.slow)  # a stack, a killed process or a gateway of its own
        elif Path(item.path).name in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    column = 1 if xdist else 0

    def order(item: pytest.Item) -> tuple[int, int, bool]:
        name = Path(item.path).name
        if (package := _package(item)) is not None:
            return PACKAGES[package][column], 0, name in LAST
        long = LONG_UNIT_MODULES.index(name) if xdist and name in LONG_UNIT_MODULES else len(LONG_UNIT_MODULES)
        return (3 if xdist else 0), long, False

    items.sort(key=order)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadscope``: tests/events is one unit (its event stack starts once, on one worker); every other
    module is a unit of its own (its module fixtures are built once). pytest-xdist's own ``loadgroup`` marks do not
    group under pytest 9 (it renames ``item._nodeid``, which pytest 9 no longer reads)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class PackageScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/events" if path.startswith("tests/events/") else path

    return PackageScheduling(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    """``SCENE_TEST_TIMELINE=<file>``: each worker appends ``worker<TAB>start<TAB>end<TAB>nodeid`` per test (setup and
    teardown included) — where the suite's wall time goes (benchmarks/test_timeline.py reads it)."""
    path = os.environ.get("SCENE_TEST_TIMELINE")
    start = time.time()
    result = yield
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{worker}\t{start:.3f}\t{time.time():.3f}\t{item.nodeid}\n")
    return result


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
