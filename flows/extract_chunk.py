"""Flow: one chunk of a backbone's feature extraction, on its own worker (issue 24).

``train-all`` with ``extract_chunks=K`` splits the images into K chunks of whole feature-cache partitions
(:func:`scene.train.features.chunks`: by the first hex digit of each image's sha256) and starts one run of this
flow per chunk and backbone on a work pool (:func:`flows.dispatching.extract_in_chunks`); each extracts its chunk
into the shared feature cache (an ``s3://`` cache when the workers are on other machines) and reads only its own
partitions. ``train-all`` waits for the chunks; then its audit and each backbone's training find the vectors cached.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from scene.data import scope
from scene.train.params import TrainParams
from tasks import artifacts, training
from tasks import data as data_tasks
from tasks.common import FLOW_TIMEOUT_S, keeps_termination, settings, work_folder


@flow(name="extract-chunk", log_prints=True, timeout_seconds=FLOW_TIMEOUT_S, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
@keeps_termination
def extract_chunk(
    backbone: str,
    manifest_uri: str,
    chunk: int,
    chunks: int,
    params: TrainParams = TrainParams(),
    feature_cache: str | None = None,
    on_missing_weights: Literal["random-init", "fail"] = "fail",
) -> dict:
    """Extract chunk ``chunk`` (0-based) of ``chunks`` of a published manifest's images into ``feature_cache``
    (default: SCENE_FEATURE_CACHE)."""
    scope.require_feature_cache(feature_cache, settings())  # where it writes: never a path the caller picks
    if not 0 <= chunk < chunks:
        raise ValueError(f"extract-chunk: chunk={chunk} is invalid for chunks={chunks}; pass 0..{chunks - 1}")
    params = params.resolved()
    facts = {"backbone": backbone, "chunk": f"{chunk + 1} of {chunks}", "data": manifest_uri, **params.facts()}
    summary_id = artifacts.start_summary("extract-chunk", facts)
    ds = data_tasks.load_manifest(manifest_uri)
    run = training.prepare(ds, params.config(backbone), str(work_folder(f"{backbone}-chunk{chunk}")),
                           on_missing_weights, cache_root=feature_cache)
    stats = training.extract(run, chunk=(chunk, chunks))
    out = {"backbone": backbone, "chunk": chunk, "chunks": chunks, "requested": stats.requested if stats else 0,
           "computed": stats.computed if stats else 0, "cached": stats.cached if stats else 0}
    get_run_logger().info("%s chunk %d/%d: %d vectors computed, %d already cached", backbone, chunk + 1, chunks,
                          out["computed"], out["cached"])
    artifacts.finish_chunk_summary(summary_id, {**facts, **out})
    return out
