"""CPU per S3 object read: boto3's ``get_object`` vs scene's image reader (:mod:`scene.data.image_fetch`).

On a 2-core machine every millisecond of Python CPU spent fetching an image is taken from the backbone, so the
reader's CPU per object, not its wall time, decides how close extraction from ``s3://`` gets to the raw model
speed. Both readers fetch the same objects from a local JuiceFS gateway (started here) in one process, alternating
(boto3, scene, boto3, scene) so that load on the machine hits both alike; the ratio is the figure of record.

    .venv/bin/python benchmarks/s3_reads.py [--objects 300] [--gateway-flags]

``--gateway-flags`` also measures the gateway's own CPU per GET (from ``/proc``) with the flags ``scene stack up``
starts it with (``scene.ops.services.GATEWAY_CACHE``: metadata caches, no block cache) against JuiceFS' defaults,
restarting the same gateway on the same volume between runs (defaults, scene, scene, defaults).
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
INTEL = REPO.parent / "shared" / "data" / "intel" / "seg_train"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(read, uris: list[str]) -> tuple[float, float]:
    """(ms CPU per object, ms wall per object), one thread, after a short warm-up."""
    for uri in uris[:10]:
        read(uri)
    cpu, wall = _cpu(), time.perf_counter()
    for uri in uris:
        read(uri)
    return 1000 * (_cpu() - cpu) / len(uris), 1000 * (time.perf_counter() - wall) / len(uris)


def _gateway_flags(state: Path, uris: list[str], rounds: int = 3) -> None:
    """Gateway CPU per GET: JuiceFS' defaults vs scene's GATEWAY_CACHE, the gateway restarted for each run."""
    from scene.data import image_fetch
    from scene.data.storage import s3_client
    from scene.ops import services, stack
    from scene.ops.supervisor import cpu_seconds, read_json, stop, wait_healthy

    port = stack.info(state).ports[services.S3]
    creds = read_json(state / "credentials.json")
    flags = {"JuiceFS defaults": (), "scene (GATEWAY_CACHE)": services.GATEWAY_CACHE}
    out: dict[str, list[float]] = {name: [] for name in flags}
    for name in ("JuiceFS defaults", "scene (GATEWAY_CACHE)", "scene (GATEWAY_CACHE)", "JuiceFS defaults"):
        stop(state, services.S3)
        pid = services.start_gateway(state, port, creds, None, None, cache_flags=flags[name])
        wait_healthy(state, services.S3, pid, lambda: services.s3_healthy(port), 60.0, f"S3 gateway ({name})")
        fetch = image_fetch.reader(s3_client(stack.settings_for(state)))
        for uri in uris[:20]:
            fetch(uri)
        before = cpu_seconds(pid)
        for _ in range(rounds):
            for uri in uris:
                fetch(uri)
        out[name].append(1000 * (cpu_seconds(pid) - before) / (rounds * len(uris)))
    print("gateway CPU per GET (its own process, from /proc):")
    for name, runs in out.items():
        print(f"  {name:22s} {sum(runs) / len(runs):5.2f} ms  (runs: {', '.join(f'{r:.2f}' for r in runs)})")
    a, b = (sum(v) / len(v) for v in out.values())
    print(f"gateway CPU per GET, scene / defaults: {b / a:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=300)
    p.add_argument("--gateway-flags", action="store_true", help="also compare the gateway's CPU per GET by flags")
    a = p.parse_args()
    from scene.data import image_fetch
    from scene.data.storage import read_bytes, s3_client
    from scene.ops import stack

    files = sorted(INTEL.rglob("*.jpg"))[: a.objects]
    if not files:
        sys.exit(f"{INTEL}: no photos (the benchmark reads real Intel photos)")
    state = Path(tempfile.mkdtemp(prefix="scene-s3reads-")) / "stack"
    stack.up(state, s3_port=_free_port(), prefect_port=_free_port(), pools=())
    try:
        settings = stack.settings_for(state)
        s3 = s3_client(settings)
        uris = []
        for i, f in enumerate(files):
            s3.put_object(Bucket=settings.data_bucket, Key=f"bench/{i:05d}.jpg", Body=f.read_bytes())
            uris.append(f"s3://{settings.data_bucket}/bench/{i:05d}.jpg")
        fast = image_fetch.reader(s3)
        assert all(fast(u) == read_bytes(u, s3) for u in uris[:20]), "the readers disagree"
        rows: dict[str, list[tuple[float, float]]] = {"boto3 get_object": [], "scene image_fetch": []}
        for _ in range(2):
            rows["boto3 get_object"].append(_measure(lambda u: read_bytes(u, s3), uris))
            rows["scene image_fetch"].append(_measure(fast, uris))
        print(f"{len(uris)} objects ({sum(f.stat().st_size for f in files) / len(files) / 1024:.1f} KiB each), "
              "one thread:")
        means = {}
        for name, runs in rows.items():
            cpu, wall = (sum(r[i] for r in runs) / len(runs) for i in (0, 1))
            means[name] = cpu
            print(f"  {name:18s} {cpu:5.2f} ms CPU/object  {wall:5.2f} ms wall/object")
        print(f"CPU per object, image_fetch / boto3: {means['scene image_fetch'] / means['boto3 get_object']:.2f}")
        if a.gateway_flags:
            _gateway_flags(state, uris)
    finally:
        stack.down(state)


if __name__ == "__main__":
    main()
