"""TensorFlow's thread pools sized for the machine, set once before TensorFlow starts its runtime.

On a small CPU machine the defaults oversubscribe: TensorFlow's inter-op pool, its intra-op pool, tf.data's
threads and the image decoders all compete for the same cores, and system time exceeds user time. The plan
below was chosen by ``benchmarks/extraction.py --threads`` on 2 cores (see the README); larger machines keep
one intra-op thread per core and two inter-op threads. ``SCENE_TF_INTRA_THREADS`` / ``SCENE_TF_INTER_THREADS``
override it; ``SCENE_TF_THREADS=tf-default`` leaves TensorFlow's own defaults; ``SCENE_S3_READERS`` sets the S3
reader threads.

TensorFlow's CPU tensors come from its BFC allocator (``TF_CPU_ALLOCATOR_USE_BFC=true``, set unless the environment
already sets it): TensorFlow's default hands every large tensor to malloc, which maps and unmaps it each time, and on
2 cores that page-fault churn cost a third of the CPU time of a fine-tuning run. With BFC, memory is reused:
fine-tuning steps ran 1.6x and frozen forward passes 1.3-1.9x as fast (``benchmarks/allocator.py``,
docs/benchmarks.md#memory-allocator); the process keeps its peak memory instead of returning it.

Nothing happens at import: :func:`configure_threads` is called by the functions that build or run a model
(:mod:`scene.model.pipeline`, :mod:`scene.model.backbones`, :mod:`scene.model.network`, the training stages).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadPlan:
    """Thread counts for one machine."""

    intra_op: int  # threads one op (a convolution) may use
    inter_op: int  # ops that may run at the same time
    decode: int  # image read/decode threads for local files
    s3_readers: int  # image read/decode threads for S3 objects (they also wait on the network)


def cpu_cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_plan(cores: int | None = None) -> ThreadPlan:
    """The plan for ``cores`` (default: this process's cores), with the environment's overrides."""
    cores = cores or cpu_cores()
    intra = int(os.environ.get("SCENE_TF_INTRA_THREADS") or cores)
    inter = int(os.environ.get("SCENE_TF_INTER_THREADS") or (1 if cores <= 4 else 2))
    # S3: 16 whatever the cores (on 2 cores, 16 readers gave 0.82 of raw extraction speed and 4 gave 0.76; README)
    readers = int(os.environ.get("SCENE_S3_READERS") or 16)
    return ThreadPlan(intra_op=intra, inter_op=inter, decode=min(cores, 8), s3_readers=readers)


ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"  # TensorFlow reads it when it creates its CPU allocator (first op)


def configure_allocator() -> None:
    """TensorFlow's BFC allocator for CPU memory, unless ``TF_CPU_ALLOCATOR_USE_BFC`` is already set (``false`` keeps
    TensorFlow's default). Effective only before the process's first TensorFlow op; child processes inherit the
    variable."""
    os.environ.setdefault(ALLOCATOR_ENV, "true")


_applied: ThreadPlan | None = None
_tried = False  # configure_threads ran in this process (whatever it found)


def configure_threads() -> ThreadPlan | None:
    """Apply :func:`thread_plan` (and :func:`configure_allocator`) to TensorFlow, once per process: the first function
    that builds or runs a model calls it (importing ``scene`` does not). ``None`` when
    ``SCENE_TF_THREADS=tf-default`` or when TensorFlow's runtime had already started (its pools cannot change then,
    so the defaults stay)."""
    global _applied, _tried
    if _tried:
        return _applied
    _tried = True
    configure_allocator()  # before the first op, like the thread pools
    if os.environ.get("SCENE_TF_THREADS") == "tf-default":
        return None
    import tensorflow as tf

    plan = thread_plan()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op)
    except RuntimeError:  # "cannot be modified after initialization"
        return None
    _applied = plan
    return plan
