"""Benchmark: sharded extraction and prediction over workers (issue 24), and the orchestration's own scaling.

1. ``workers`` (no Prefect): the same real Intel photos extracted (:func:`scene.train.features.extract`, plain view,
   one chunk of whole cache partitions per worker) and predicted (:func:`scene.model.parts.predict_part`, one chunk
   of the listing per worker) by 1 and by 2 worker processes, each pinned to one core (``sched_setaffinity``: a
   worker is one core's share of the machine, as a pool of one-core workers would be), plus one unpinned process
   on every core (the unsharded run). Wall time from process start to exit (imports, model build and the work),
   and the work alone. Ratios come from the same run. First the machine's own ceiling: two pinned processes of
   single-threaded sha256 or float32 matmul work against one (two vCPUs need not give twice one's throughput).
2. ``rss``: one prediction worker's and one extraction worker's peak RSS on 1× and 4× the images (flat = streaming).
   ``manifest``: the manifest step's time per image (list, read, hash, check) against extraction's, one process each;
   then the step in chunks (``extract_chunks`` > 1) read by 1 and 2 pinned reader processes, and the building
   process's own share.
3. ``sim`` (a real Prefect stack started here in a temp folder, one process worker whose ``gpu`` pool takes N runs
   at once): ``predict``-style fan-out of N chunk runs through :func:`flows.dispatching.run_chunks` whose work is a
   sleep per batch (no CPU), for N = 1, 2, 4, 8, 16 over the same total work: wall time, speed-up, efficiency, and
   the fixed cost per chunk (wall − work/N); first one chunk with no work (the fixed cost alone). Without 1 in
   ``--sim-n`` (a long simulation), N = 1's wall is computed as work + that fixed cost instead of run.

    .venv/bin/python benchmarks/scale.py [--images 480] [--size 150] [--no-workers] [--no-rss] [--no-manifest]
        [--no-sim] [--sim-work 160] [--sim-n 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
BATCH = 64


# ----------------------------------------------------------------------------------------------- workers (1, 2)


def child(kind: str, chunk: int, chunks: int, images: int, size: int, folder: str = "") -> dict[str, Any]:
    """One worker: extract or predict its chunk of ``images`` photos, or read its chunk of the manifest step's
    listing under ``folder``; the work's seconds and the peak RSS."""
    from extraction import WEIGHTS, _rows, peak_mib

    if kind == "read":
        from scene.data import reading

        start = time.perf_counter()
        got = reading.read_chunk(folder, chunk)
        return {"images": len(got.rows) + len(got.rejected), "work_s": time.perf_counter() - start,
                "peak_mib": peak_mib()}

    from scene.metadata import CLASS_NAMES
    from scene.model import parts
    from scene.model.backbones import feature_extractor
    from scene.model.network import assemble, build_head
    from scene.train import features
    from scene.train.fit import TrainConfig, weights_for

    rows = _rows(images)
    weights = weights_for(TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), image_size=size))
    with tempfile.TemporaryDirectory(prefix="scene-scale-") as tmp:
        if kind == "extract":
            mine = features.chunks(rows, chunks)[chunk]
            model = feature_extractor("mobilenetv2", size, weights, 0)
            start = time.perf_counter()
            features.extract(mine, [0], backbone="mobilenetv2", weights=weights, size=size,
                             cache=features.FeatureCache(tmp, "scale"), model=model)
            n = len(mine)
        else:
            keys = [k for k in rows["key"] if parts.chunk_of(k, chunks) == chunk]
            model = assemble("mobilenetv2", size, weights, build_head(1280, 6), 0)
            start = time.perf_counter()
            n = parts.predict_part(model, keys, list(CLASS_NAMES), tmp, chunk).rows
        work = time.perf_counter() - start
    return {"images": n, "work_s": work, "peak_mib": peak_mib()}


def busy(kind: str) -> dict[str, Any]:
    """A fixed amount of single-threaded work: sha256 of 4 GiB (integer) or float32 matmuls (SIMD, like convs)."""
    import hashlib

    import numpy as np

    start = time.perf_counter()
    if kind == "sha256":
        block = b"x" * (1 << 20)
        h = hashlib.sha256()
        for _ in range(4096):
            h.update(block)
    else:
        a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
        for _ in range(1500):
            a = (a @ a) / 512.0
    return {"images": 0, "work_s": time.perf_counter() - start, "peak_mib": 0.0}


def machine() -> None:
    """How much faster two pinned processes finish two units of single-threaded work than one finishes one unit,
    doubled: this machine's own 2-core scaling, the ceiling of any split of work over its two cores."""
    for kind in ("sha256", "matmul"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        args = [sys.executable, __file__, "--busy", kind]
        one = _timed([args], [0], env)
        two = _timed([args, args], [0, 1], env)
        print(f"  machine  {kind:8s} 2 pinned processes do {2 * one / two:.2f}× the work of one per second "
              f"({one:.1f} s for one unit alone, {two:.1f} s for two at once)", flush=True)


def _timed(commands: list[list[str]], cores: list[int], env: dict[str, str]) -> float:
    """Seconds of the slowest command's own work, all started at once, command i pinned to core i."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
                              preexec_fn=lambda core=core: os.sched_setaffinity(0, {core}))
             for c, core in zip(commands, cores, strict=True)]
    return max(json.loads(p.communicate()[0].strip().splitlines()[-1])["work_s"] for p in procs)


def _spawn(kind: str, chunk: int, chunks: int, images: int, size: int, core: int | None,
           folder: str = "") -> subprocess.Popen:
    args = [sys.executable, __file__, "--child", kind, "--chunk", str(chunk), "--chunks", str(chunks),
            "--images", str(images), "--size", str(size), "--folder", folder]
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=pin)


def _gang(kind: str, workers: int, images: int, size: int, pinned: bool) -> dict[str, Any]:
    """``workers`` processes at once, one chunk each (pinned: worker i on core i); wall time until all exit."""
    start = time.perf_counter()
    procs = [_spawn(kind, i, workers, images, size, i if pinned else None) for i in range(workers)]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"{kind} worker exited {p.returncode}:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    assert sum(r["images"] for r in results) == images, results
    return {"wall_s": wall, "work_s": max(r["work_s"] for r in results),
            "peak_mib": max(r["peak_mib"] for r in results)}


def workers(images: int, size: int) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        print("  workers: skipped (this process may use only one core)")
        return
    print(f"workers: {images} photos at {size} px, MobileNetV2; each pinned worker on one core of {cores}", flush=True)
    machine()
    for kind in ("extract", "predict"):
        one = _gang(kind, 1, images, size, pinned=True)
        two = _gang(kind, 2, images, size, pinned=True)
        whole = _gang(kind, 1, images, size, pinned=False)
        print(f"  {kind:8s} 1 worker  {one['wall_s']:6.1f} s wall ({one['work_s']:6.1f} s work, "
              f"{images / one['work_s']:5.1f} img/s)", flush=True)
        print(f"  {kind:8s} 2 workers {two['wall_s']:6.1f} s wall ({two['work_s']:6.1f} s work): "
              f"{one['wall_s'] / two['wall_s']:.2f}× wall, {one['work_s'] / two['work_s']:.2f}× work", flush=True)
        print(f"  {kind:8s} unpinned, all {cores} cores, 1 process {whole['wall_s']:6.1f} s wall "
              f"({whole['work_s']:6.1f} s work): 2 pinned workers are {whole['wall_s'] / two['wall_s']:.2f}× "
              f"its wall, {whole['work_s'] / two['work_s']:.2f}× its work", flush=True)


def rss(images: int, size: int) -> None:
    print(f"rss: one worker (all cores), peak resident memory on {images} and {4 * images} photos", flush=True)
    for kind in ("predict", "extract"):
        a = _gang(kind, 1, images, size, pinned=False)["peak_mib"]
        b = _gang(kind, 1, 4 * images, size, pinned=False)["peak_mib"]
        print(f"  {kind:8s} {a:7.0f} MiB at 1×, {b:7.0f} MiB at 4× ({b / a:.2f}×)", flush=True)


def manifest(images: int) -> None:
    """The manifest step (list, read, sha256 and check every image: :func:`scene.data.dataset.build_dataset`, 8
    threads, as train-all runs it) against one worker's plain-view extraction of the same photos (all cores); then
    the same step in chunks (:mod:`scene.data.reading`, what ``extract_chunks`` > 1 does): 1 and 2 pinned reader
    processes, and the building process's own share (listing, writing the listings, taking the parts, splits)."""
    from extraction import INTEL

    from scene.data.dataset import build_dataset

    start = time.perf_counter()
    ds = build_dataset(str(INTEL))
    per_image = (time.perf_counter() - start) / len(ds.manifest)
    extract = _gang("extract", 1, images, 150, pinned=False)["work_s"] / images
    print(f"manifest: {len(ds.manifest)} photos in {per_image * len(ds.manifest):.1f} s ({per_image * 1e3:.2f} ms per "
          f"image, one process); extraction {extract * 1e3:.2f} ms per image per view ({images} photos, one process, "
          f"150 px): the manifest step is {per_image / extract:.2f} of one view's extraction", flush=True)
    chunked = {k: _chunked_manifest(str(INTEL), k, ds) for k in (1, 2)}
    n = len(ds.manifest)
    for k, (own, work) in chunked.items():
        print(f"  in chunks: {k} pinned reader(s) {work:5.1f} s ({work / n * 1e3:.2f} ms per image); the building "
              f"process's own part {own:4.1f} s ({own / n * 1e3:.3f} ms per image)", flush=True)
    print(f"  2 readers / 1: {chunked[1][1] / chunked[2][1]:.2f}× (work)", flush=True)


def _chunked_manifest(root: str, chunks: int, expected: Any) -> tuple[float, float]:
    """build_dataset with its files read by ``chunks`` pinned ``read`` workers (one chunk each): (seconds of the
    building process's own work, seconds of the slowest reader's work). The manifest must equal ``expected``'s."""
    import pandas as pd

    from scene.data import reading
    from scene.data.dataset import build_dataset

    readers = [0.0]
    with tempfile.TemporaryDirectory(prefix="scene-reading-") as folder:
        def fan_out(files: list[Any]) -> Any:
            listings = reading.split_files(files, folder, chunks)
            began = time.perf_counter()
            procs = [_spawn("read", i, chunks, len(files), 0, i, folder) for i in range(chunks)]
            results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            readers[0] = time.perf_counter() - began
            readers.append(max(r["work_s"] for r in results))
            got, here = reading.collect(folder, listings)
            assert not here, f"chunks {here} had no part"
            return got

        start = time.perf_counter()
        ds = build_dataset(root, read=fan_out)
        own = time.perf_counter() - start - readers[0]
    pd.testing.assert_frame_equal(ds.manifest, expected.manifest)
    return own, readers[1]


# --------------------------------------------------------------------------------------- orchestration simulation


@flow(name="scale-sleep-chunk")
def sleep_chunk(chunk: int, chunks: int, batches: int, batch_s: float) -> dict[str, Any]:
    """One simulated chunk: its share of ``batches`` batches, each a sleep of ``batch_s`` (no CPU)."""
    mine = len(range(chunk, batches, chunks))
    start = time.perf_counter()
    for _ in range(mine):
        time.sleep(batch_s)
    return {"batches": mine, "seconds": time.perf_counter() - start}


@flow(name="scale-fan-out")
def fan_out(deployment: str, chunks: int, batches: int, batch_s: float) -> float:
    """N chunk runs through the dispatcher predict and train-all use; seconds until all are final."""
    from flows import dispatching

    start = time.perf_counter()
    out = dispatching.run_chunks(deployment, chunks, {"chunks": chunks, "batches": batches, "batch_s": batch_s},
                                 label="sim", tags=["scale-sim"], redo="(simulation)", start_timeout_s=600,
                                 timeout_s=3600, poll=0.5)
    seconds = time.perf_counter() - start
    bad = [i for i, (_, state) in out.items() if not state.is_completed()]
    if bad:
        raise RuntimeError(f"simulated chunks {bad} did not complete")
    return seconds


def sim(work_s: float, ns: list[int]) -> None:
    """Start a stack in a temp folder and run :func:`sim_run` in a process whose environment points at it (Prefect
    reads its API settings when it is imported)."""
    from scene.ops import stack

    state = Path(tempfile.mkdtemp(prefix="scene-scale-stack-"))
    ports = _free_ports(2)
    print(f"sim: starting a stack in {state} (one process worker, gpu pool limit {max(ns)})", flush=True)
    stack.up(state, pools=("gpu",), gpus=max(ns), s3_port=ports[0], prefect_port=ports[1], workdir=REPO)
    try:
        env = dict(os.environ)
        for line in stack.env_lines(state):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
        subprocess.run([sys.executable, __file__, "--sim-run", "--sim-work", str(work_s), "--sim-n",
                        ",".join(map(str, ns))], env=env, cwd=REPO, check=True)
    finally:
        stack.down(state)


def sim_run(work_s: float, ns: list[int]) -> None:
    """The simulation, against the stack this process's environment names."""
    from prefect.client.orchestration import get_client

    batches, batch_s = 160, work_s / 160
    with get_client(sync_client=True) as client:
        client.create_deployment(flow_id=client.create_flow_from_name("scale-sleep-chunk"), name="sim",
                                 work_pool_name="gpu", entrypoint="benchmarks/scale.py:sleep_chunk",
                                 pull_steps=[{"prefect.deployments.steps.set_working_directory":
                                              {"directory": str(REPO)}}])
    deployment = "scale-sleep-chunk/sim"
    fixed = fan_out(deployment, 1, 0, 0.0)
    print(f"  one chunk, no work: {fixed:.1f} s (the fixed cost of one chunk run: worker poll, process start, "
          "flow engine, state polling)", flush=True)
    print(f"  {work_s:.0f} s of simulated work (160 sleeps), split over N chunk runs at once:", flush=True)
    print("     N   wall s   speed-up   efficiency   fixed s per chunk", flush=True)
    base = None
    if 1 not in ns:  # a long simulation: one chunk would take all of work_s; its wall is work + one run's fixed cost
        base = work_s + fixed  # no more than the measured N = 1 wall (work + 5 s at --sim-work 640): never flatters N
        print(f"     1 {base:8.1f}  (computed: work + the fixed cost of one chunk run above, not run)", flush=True)
    for n in ns:
        wall = fan_out(deployment, n, batches, batch_s)
        base = base or wall
        print(f"  {n:4d} {wall:8.1f} {base / wall:9.2f}× {base / wall / n:11.2f}   {wall - work_s / n:9.1f}",
              flush=True)


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--size", type=int, default=150)
    p.add_argument("--no-workers", action="store_true")
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--no-sim", action="store_true")
    p.add_argument("--no-manifest", action="store_true")
    p.add_argument("--sim-work", type=float, default=160.0, help="seconds of simulated work in all")
    p.add_argument("--sim-n", default="1,2,4,8,16")
    p.add_argument("--sim-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=("extract", "predict", "read"), help=argparse.SUPPRESS)
    p.add_argument("--folder", default="", help=argparse.SUPPRESS)
    p.add_argument("--busy", choices=("sha256", "matmul"), help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--chunks", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.chunk, a.chunks, a.images, a.size, a.folder)))
        return
    if a.busy:
        print(json.dumps(busy(a.busy)))
        return
    if a.sim_run:
        sim_run(a.sim_work, [int(n) for n in a.sim_n.split(",")])
        return
    os.environ.update(DO_NOT_TRACK="1", GX_ANALYTICS_ENABLED="false")
    if not a.no_workers:
        workers(a.images, a.size)
    if not a.no_rss:
        rss(a.images, a.size)
    if not a.no_manifest:
        manifest(a.images)
    if not a.no_sim:
        sim(a.sim_work, [int(n) for n in a.sim_n.split(",")])


if __name__ == "__main__":
    main()
