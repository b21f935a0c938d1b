"""Flow: one backbone through every stage of :mod:`scene.train.stages`, uploaded and registered on the worker
that trained it.

The only flow that sequences the stages; ``train-all`` and ``retrain`` run it once per backbone (as a subflow, or
as a flow run of a ``train-backbone`` deployment on its own worker).
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from scene.data import scope
from scene.data.dataset import Dataset
from scene.train.params import TrainParams
from tasks import artifacts, training
from tasks import data as data_tasks
from tasks import registry as registry_tasks
from tasks.common import FLOW_TIMEOUT_S, keeps_termination, run_prefix, settings, work_folder


def _dataset(manifest_uri: str | None, data: str | None, test: str | None, classes: list[str] | None) -> Dataset:
    """The data to train on: a published manifest (with the data root it names), or one built and validated from
    ``data``."""
    if manifest_uri:
        if data or test or classes:
            raise ValueError("train-backbone: pass manifest_uri alone (its dataset.json names the data root, test "
                             f"root and classes) or data/test/classes without it; got manifest_uri={manifest_uri!r} "
                             f"and data={data!r}, test={test!r}, classes={classes!r}")
        return data_tasks.load_manifest(manifest_uri)
    if data:
        ds = data_tasks.build_manifest(data, test, classes)
        data_tasks.validate(ds)
        return ds
    raise ValueError("train-backbone needs manifest_uri (from train-all) or data (a folder or s3:// URI)")


@flow(name="train-backbone", log_prints=True, timeout_seconds=FLOW_TIMEOUT_S, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
@keeps_termination
def train_backbone(
    backbone: str,
    params: TrainParams = TrainParams(),
    manifest_uri: str | None = None,
    data: str | None = None,
    test: str | None = None,
    classes: list[str] | None = None,
    on_missing_weights: Literal["random-init", "fail"] = "fail",
    run_prefix_uri: str | None = None,
) -> dict:
    """Train one backbone on a published manifest, or on one built from ``data``; upload and register it."""
    if run_prefix_uri:  # only the folder of the run that started this one (train-all, retrain) or this run's own
        scope.require_run_prefix(run_prefix_uri, settings(), (flow_run.get_parent_flow_run_id(), flow_run.get_id()))
    params = params.resolved()
    facts = {"backbone": backbone, "data": manifest_uri or data, **params.facts()}
    summary_id = artifacts.start_summary("train-backbone", facts)  # first: listed above the task artifacts
    cfg = params.config(backbone)
    ds = _dataset(manifest_uri, data, test, classes)
    prefix = run_prefix_uri or run_prefix()
    get_run_logger().info("training %s on %d images; artifacts to %s", backbone, len(ds.manifest), prefix)
    run = training.prepare(ds, cfg, str(work_folder(backbone)), on_missing_weights)
    fitted = training.fit(run, training.extract(run))
    if run.cfg.finetunes:
        fitted = training.finetune(run, fitted)
    evaluation = training.evaluate(run, fitted)
    result = training.write(run, fitted, evaluation, prefix)
    backbone_prefix = f"{prefix.rstrip('/')}/{backbone}/"
    artifacts.upload(result.out_dir, backbone_prefix, label=backbone)
    if evaluation.test is not None:
        result = result.registered(registry_tasks.register(result, ds, evaluation.test, source=backbone_prefix))
    artifacts.write_result(result, backbone_prefix)
    artifacts.finish_training_summary(summary_id, "train-backbone", {**facts, "images": len(ds.manifest)}, [result],
                                      {"note": "decided by the run that started this one (train-all or retrain), "
                                       "against the dataset's champion"}, prefix)
    return result.to_dict()

