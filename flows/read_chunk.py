"""Flow: one chunk of the manifest step (issue 24): read, hash and check one chunk of a dataset's new or changed
images on its own worker.

``train-all`` (and ``retrain``) with ``extract_chunks=K`` lists the data, copies the rows of unchanged objects, writes
the files still to read into K listings under ``<its run folder>/reading/`` and starts one run of this flow per chunk
(:func:`tasks.data.build_manifest`); each writes its rows and rejected files there (:mod:`scene.data.reading`), packing
``s3://`` images as the manifest step does. The building run takes the parts, reads itself any chunk whose run left
none, and builds the same manifest one process would.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from scene.data import packs, reading, scope
from tasks import artifacts
from tasks.common import FLOW_TIMEOUT_S, keeps_termination, s3, settings


@flow(name="read-chunk", log_prints=True, timeout_seconds=FLOW_TIMEOUT_S, on_failure=[artifacts.summary_on_failure],
      on_crashed=[artifacts.summary_on_failure], on_cancellation=[artifacts.summary_on_failure])
@keeps_termination
def read_chunk(data: str, folder: str, chunk: int, chunks: int, test: str | None = None) -> dict:
    """Read chunk ``chunk`` (0-based) of ``chunks`` of the listing under ``folder`` (written by the run that builds
    the manifest of ``data`` and ``test``) into its parts there."""
    scope.require_data_uris(settings(), data=data, test=test)  # what it reads: only the data bucket and prefix
    scope.require_run_prefix(folder, settings(), (flow_run.get_parent_flow_run_id(), flow_run.get_id()))
    if not 0 <= chunk < chunks:
        raise ValueError(f"read-chunk: chunk={chunk} is invalid for chunks={chunks}; pass 0..{chunks - 1}")
    facts = {"data": data, "chunk": f"{chunk + 1} of {chunks}", "folder": folder}
    summary_id = artifacts.start_summary("read-chunk", facts)
    got = reading.read_chunk(folder, chunk, s3(), roots=reading.roots(data, test),
                             writer=packs.writer_for(data, settings().artifact_bucket, s3()))
    out = {"chunk": chunk, "chunks": chunks, "rows": len(got.rows), "rejected": len(got.rejected),
           "packs_written": got.packs_written}
    get_run_logger().info("chunk %d/%d of %s: %d images read, %d rejected, %d packs written", chunk + 1, chunks,
                          data, out["rows"], out["rejected"], out["packs_written"])
    artifacts.finish_chunk_summary(summary_id, {**facts, **out}, "read-chunk")
    return out
