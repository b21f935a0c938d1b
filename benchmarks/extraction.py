"""Benchmark: scene's feature extraction, evaluation and prediction against the backbone's own speed.

In one process, on the same real Intel photos (MobileNetV2, the shipped offline ImageNet weights):

1. ``raw``: the very same model on tensors decoded beforehand (the ceiling), on each runtime: TensorFlow's compiled
   call (:func:`scene.model.pipeline.compiled`) and the chosen one (:mod:`scene.model.infer`, ``--runtime``; OpenVINO
   on CPU when installed);
2. ``extract (files)``: :func:`scene.train.features.extract` from the JPEG files into an empty cache;
3. ``extract (s3)``: the same from ``s3://`` objects on a local JuiceFS gateway (started here), one GET per image;
   ``extract (s3 packs)``: the same objects with the image packs the manifest step writes (:mod:`scene.data.packs`,
   built here the same way), one GET per pack of 256;
4. ``evaluate``: :func:`scene.model.predict.predict` + metrics of the full model (backbone + head) from the files;
5. ``predict``: :func:`scene.model.parts.predict_folder` of the full model, folder in, CSV out;
Paths 2-5 run on the chosen runtime. Each path runs between two raw runs of its model on each runtime and its
ratios (to TensorFlow's raw speed, and to the chosen runtime's) use their means; ``--rounds`` repeats the whole
sequence and reports the median ratio with its range (the machine is shared: load hits a path and its ceilings alike).

``--rss`` also runs the extraction in fresh processes on 1× and 4× the images and prints their peak RSS.
``--threads`` compares TensorFlow thread settings (fresh process each) by the extraction/raw ratio.
``--raw PASSES`` only times the backbone on TensorFlow, OpenVINO f32 and OpenVINO's CPU default precision, interleaved
batch by batch.

    .venv/bin/python benchmarks/extraction.py [--images 600] [--rounds 3] [--size 150] [--rss] [--threads] [--xla]
        [--no-s3] [--runtime auto|tensorflow|openvino] [--raw PASSES]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
INTEL = REPO.parent / "shared" / "data" / "intel" / "seg_train"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"
BATCH = 64


def _rows(n: int):
    from scene.data.dataset import build_dataset

    manifest = build_dataset(str(INTEL)).manifest.drop_duplicates("sha256")
    per_class = -(-n // manifest["label"].nunique())
    return manifest.groupby("label").head(per_class).head(n).reset_index(drop=True)


def _rate(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _upload(rows, tmp: Path):
    """Start a local S3 gateway (no Prefect workers), upload the images; the rows with s3:// keys (and, in
    column ``pack``, the image pack of each, written as the manifest step writes them)."""
    from scene.data import packs
    from scene.data.storage import s3_client
    from scene.ops import stack

    state = tmp / "stack"
    info = stack.up(state, s3_port=_free_port(), prefect_port=_free_port(), pools=())
    settings = stack.settings_for(state)
    s3 = s3_client(settings)
    keys = []
    for i, key in enumerate(rows["key"]):
        name = f"bench/{i:05d}.jpg"
        s3.put_object(Bucket=settings.data_bucket, Key=name, Body=Path(key).read_bytes())
        keys.append(f"s3://{settings.data_bucket}/{name}")
    writer = packs.PackWriter(f"s3://{settings.artifact_bucket}/packs", s3)
    for key, sha in zip(rows["key"], rows["sha256"], strict=True):
        writer.add(sha, Path(key).read_bytes())
    where = writer.close()
    return rows.assign(key=keys, pack=[where[sha] for sha in rows["sha256"]]), s3, info, state


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_readers(n: int, fn: Any) -> Any:
    """``fn()`` with ``SCENE_S3_READERS=n`` (read by :func:`scene.model.runtime.thread_plan` on each call)."""
    old = os.environ.get("SCENE_S3_READERS")
    os.environ["SCENE_S3_READERS"] = str(n)
    try:
        return fn()
    finally:
        os.environ.pop("SCENE_S3_READERS") if old is None else os.environ.__setitem__("SCENE_S3_READERS", old)


def run(n: int, size: int, with_s3: bool, xla: bool = False, rounds: int = 1, s3_readers: int = 0) -> dict[str, Any]:
    """``rounds`` rounds; in each, every path runs between two raw runs of its model on each runtime, TensorFlow's
    compiled call and the chosen runtime's (:func:`scene.model.infer.selected`), and its ratios use their means, so
    that load from other work on this shared machine hits a path and its ceilings alike. Returns each name's median
    img/s (``rates``), every round's ratio to TensorFlow's raw speed (``ratios``) and to the chosen runtime's
    (``ratios_chosen``), and the chosen runtime (``runtime``)."""
    import statistics

    import numpy as np

    from scene.evaluation.metrics import evaluate_predictions
    from scene.metadata import CLASS_NAMES
    from scene.model import infer
    from scene.model.backbones import feature_extractor
    from scene.model.network import assemble, build_head
    from scene.model.parts import predict_folder
    from scene.model.pipeline import compiled, pixel_batches
    from scene.model.predict import predict
    from scene.ops import stack, supervisor
    from scene.train import features
    from scene.train.fit import TrainConfig, weights_for

    chosen = infer.selected()
    rows = _rows(n)
    weights = weights_for(TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), image_size=size))
    extractor = feature_extractor("mobilenetv2", size, weights, 0)
    full = assemble("mobilenetv2", size, weights, build_head(1280, 6), 0)
    x = np.concatenate(list(pixel_batches(rows["key"].tolist(), size, batch_size=BATCH)))
    runners: dict[int, Any] = {}
    for model in (extractor, full):  # the chosen runtime's callable (its export checked against Keras here)
        if chosen == "openvino":
            runner, _ = infer.openvino_runner(model, x[:BATCH])
            if runner is None:
                sys.exit(f"OpenVINO refused {model.name} (see the warning); rerun with {infer.ENV}=tensorflow")
            runners[id(model)] = runner
        else:
            runners[id(model)] = compiled(model)

    def raw(model, runtime: str = "tensorflow") -> float:
        fn = compiled(model) if runtime == "tensorflow" else runners[id(model)]
        return _rate(len(x), lambda: [np.asarray(fn(x[i:i + BATCH])) for i in range(0, len(x), BATCH)])

    def extract(r, s3=None) -> float:
        with tempfile.TemporaryDirectory() as cache:
            return _rate(len(r), lambda: features.extract(r, [0], backbone="mobilenetv2", weights=weights, size=size,
                                                          cache=features.FeatureCache(cache, "bench"), s3=s3,
                                                          model=extractor))

    def evaluate() -> None:
        p = predict(full, rows, size, split="test")
        evaluate_predictions(p.y_true, p.probs, list(CLASS_NAMES))

    tmp = Path(tempfile.mkdtemp(prefix="scene-bench-"))
    folder = tmp / "images"
    folder.mkdir()
    for i, key in enumerate(rows["key"]):
        shutil.copyfile(key, folder / f"{i:05d}.jpg")
    paths = {"extract (files)": (extractor, lambda: extract(rows)),
             "evaluate (files)": (full, lambda: _rate(len(rows), evaluate)),
             "predict (folder → csv)": (full, lambda: _rate(len(rows), lambda: predict_folder(
                 full, str(folder), str(tmp / "p.csv"), CLASS_NAMES)))}
    state = None
    if with_s3:
        packed_rows, s3, _, state = _upload(rows, tmp)
        s3_rows = packed_rows.assign(pack="")
        paths["extract (s3)"] = (extractor, lambda: extract(s3_rows, s3))
        paths["extract (s3 packs)"] = (extractor, lambda: extract(packed_rows, s3))
        if s3_readers:  # the same with another number of S3 reader threads (scene.model.runtime)
            paths[f"extract (s3, {s3_readers} readers)"] = (extractor, lambda: _with_readers(
                s3_readers, lambda: extract(s3_rows, s3)))
    for model in (extractor, full):  # warm-up: trace TensorFlow's compiled function, run the chosen runtime once
        raw(model), raw(model, chosen)
    names = {id(extractor): "raw extractor", id(full): "raw full model"}
    rates: dict[str, list[float]] = {f"{m} ({rt})": [] for m in names.values() for rt in dict.fromkeys(
        ["tensorflow", chosen])}
    ratios: dict[str, list[float]] = {name: [] for name in paths}
    ratios_chosen: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for _ in range(rounds):
            for name, (model, path) in paths.items():
                gateway = supervisor.running(state, stack.S3) if name.startswith("extract (s3") else None
                tf_before, rt_before = raw(model), raw(model, chosen)
                cpu, wall = supervisor.cpu_seconds(gateway), time.perf_counter()
                rate = path()
                share = (supervisor.cpu_seconds(gateway) - cpu) / ((time.perf_counter() - wall) * (os.cpu_count() or 1))
                rt_after, tf_after = raw(model, chosen), raw(model)
                rates.setdefault(name, []).append(rate)
                rates[f"{names[id(model)]} (tensorflow)"] += [tf_before, tf_after]
                if chosen != "tensorflow":
                    rates[f"{names[id(model)]} ({chosen})"] += [rt_before, rt_after]
                ratios[name].append(rate / ((tf_before + tf_after) / 2))
                ratios_chosen[name].append(rate / ((rt_before + rt_after) / 2))
                if gateway:
                    print(f"the S3 gateway itself used {share:.0%} of this machine's CPU during '{name}'")
    finally:
        if state is not None:
            stack.down(state)
    if xla:  # the same network compiled by XLA (jit_compile); the first call compiles, so warm it up
        jit = feature_extractor("mobilenetv2", size, weights, 0)
        jit.jit_compile = True
        jit.predict_on_batch(x[:BATCH])
        before = raw(extractor)
        rate = _rate(len(x), lambda: [jit.predict_on_batch(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
        after = raw(extractor)
        rates["raw extractor, XLA"], ratios["raw extractor, XLA"] = [rate], [rate / ((before + after) / 2)]
    for name in names.values() if chosen != "tensorflow" else ():  # the chosen runtime's raw over TensorFlow's
        tf_r, rt_r = rates[f"{name} (tensorflow)"], rates[f"{name} ({chosen})"]
        ratios[f"{name} ({chosen})"] = [b / a for a, b in zip(tf_r, rt_r, strict=True)]
    return {"rates": {k: statistics.median(v) for k, v in rates.items()}, "ratios": ratios,
            "ratios_chosen": ratios_chosen, "runtime": chosen}


def report(result: dict[str, Any], n: int) -> None:
    """Each path's median img/s and its ratios to the raw runs around it: the median over rounds (min–max)."""
    import statistics

    chosen = result.get("runtime", "tensorflow")
    print(f"\n{n} images, batch {BATCH}, {os.cpu_count()} cores, chosen runtime {chosen}; ratio = img/s ÷ the mean of "
          "the raw runs just before and after it (median of rounds, min–max)")
    for name, rate in result["rates"].items():
        r, c = result["ratios"].get(name), result.get("ratios_chosen", {}).get(name)
        ratio = f"{statistics.median(r):5.2f}× TF raw ({min(r):.2f}–{max(r):.2f})" if r else ""
        if c and chosen != "tensorflow":
            ratio += f"  {statistics.median(c):5.2f} of {chosen} raw ({min(c):.2f}–{max(c):.2f})"
        print(f"  {name:30s} {rate:7.1f} img/s  {ratio}")


def raw_ab(n: int, size: int, passes: int) -> None:
    """The backbone alone on TensorFlow's compiled call, OpenVINO f32 as scene runs it (slices of
    :data:`scene.model.infer.SLICE` images), OpenVINO f32 on whole batches, and OpenVINO BF16
    (``SCENE_INFERENCE_PRECISION=bf16``, where the CPU has BF16), interleaved batch by batch so that load from other
    work hits all alike; the median ratio of ``passes`` passes."""
    import statistics

    import numpy as np

    from scene.model import infer
    from scene.model.backbones import feature_extractor
    from scene.model.pipeline import compiled, pixel_batches
    from scene.train.fit import TrainConfig, weights_for

    rows = _rows(n)
    weights = weights_for(TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), image_size=size))
    model = feature_extractor("mobilenetv2", size, weights, 0)
    x = np.concatenate(list(pixel_batches(rows["key"].tolist(), size, batch_size=BATCH)))
    f32, _ = infer.openvino_runner(model, x[:BATCH], precision="f32")
    if f32 is None:
        sys.exit("OpenVINO refused the export (see the warning)")
    tf_fn = compiled(model)
    fns = {"tensorflow": lambda b: np.asarray(tf_fn(b)), f"openvino f32 (slices of {infer.SLICE})": f32,
           f"openvino f32 (batches of {BATCH})": infer.OpenVINOModel(f32.compiled, slice_size=BATCH)}
    if infer.cpu_has_bf16():
        bf16, _ = infer.openvino_runner(model, x[:BATCH], precision="bf16")
        if bf16 is not None:
            fns[f"openvino bf16 (slices of {infer.SLICE})"] = bf16
    ref = np.concatenate([fns["tensorflow"](x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
    for name, fn in fns.items():
        out = np.concatenate([fn(x[i:i + BATCH]) for i in range(0, len(x), BATCH)])
        print(f"  {name:32s} relative difference to TensorFlow {infer.relative_difference(ref, out):.2g}")
    ratios: dict[str, list[float]] = {name: [] for name in fns}
    for p in range(passes):
        spent = dict.fromkeys(fns, 0.0)
        for i in range(0, len(x), BATCH):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x[i:i + BATCH])
                spent[name] += time.perf_counter() - start
        for name in fns:
            ratios[name].append(spent["tensorflow"] / spent[name])
        print(f"  pass {p}: " + ", ".join(f"{k} {len(x) / v:.0f} img/s" for k, v in spent.items()), flush=True)
    for name, r in ratios.items():
        print(f"  {name:32s} {statistics.median(r):.2f}× TensorFlow ({min(r):.2f}–{max(r):.2f}, {passes} passes)")


def decode_costs(n: int) -> None:
    """Per image on one core (best of 3 passes over ``n`` photos): reading the file, its SHA-256, Pillow's decode
    (open, EXIF orientation, RGB), libjpeg-turbo through simplejpeg, and scene's decoder (the latter for plain JPEGs,
    Pillow for the rest); and whether the two decoders give the same pixels."""
    import hashlib

    import numpy as np
    import simplejpeg
    from PIL import ImageOps

    from scene.data import images

    paths = _rows(n)["key"].tolist()
    data = [Path(p).read_bytes() for p in paths]

    def pillow(d: bytes):
        return np.asarray(images.to_rgb(ImageOps.exif_transpose(images._open(d))), np.uint8)

    steps = {"read the file": lambda i: Path(paths[i]).read_bytes(),
             "sha256": lambda i: hashlib.sha256(data[i]).digest(),
             "Pillow decode": lambda i: pillow(data[i]),
             "simplejpeg decode": lambda i: simplejpeg.decode_jpeg(data[i], colorspace="RGB"),
             "scene decode_rgb": lambda i: images.decode_rgb(data[i])}
    for name, fn in steps.items():
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for i in range(len(data)):
                fn(i)
            best = min(best, time.perf_counter() - start)
        print(f"  {name:20s} {1000 * best / len(data):6.3f} ms per image")
    same = sum(np.array_equal(pillow(d), images.decode_rgb(d)) for d in data)
    print(f"  scene's decoder gives Pillow's exact pixels on {same} of {len(data)} photos")


def extract_rss(n: int, size: int) -> float:
    """Extract 2 views of ``n`` images into an empty cache; this process's peak RSS in MiB."""
    from scene.train import features
    from scene.train.fit import TrainConfig, weights_for

    rows = _rows(n)
    weights = weights_for(TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), image_size=size))
    with tempfile.TemporaryDirectory() as cache:
        features.extract(rows, [0, 1], backbone="mobilenetv2", weights=weights, size=size,
                         cache=features.FeatureCache(cache, "rss"))
    return peak_mib()


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: list[str], env: dict[str, str] | None = None) -> object:
    """Run this script with ``args`` in a fresh process; the JSON on its last stdout line."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"{args}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def thread_sweep(n: int, size: int) -> None:
    """Extraction/raw ratio and raw speed under several TensorFlow thread settings (a fresh process each)."""
    for intra, inter in ((0, 0), (2, 1), (2, 2), (1, 1)):
        env = {**os.environ, "SCENE_TF_INTRA_THREADS": str(intra or ""), "SCENE_TF_INTER_THREADS": str(inter or "")}
        if not intra:  # TensorFlow's own defaults: scene sets nothing
            env["SCENE_TF_THREADS"] = "tf-default"
        r = _child(["--child-run", "--images", str(n), "--size", str(size)], env)["rates"]
        label = "TF defaults" if not intra else f"intra {intra} inter {inter}"
        tf_raw = r["raw extractor (tensorflow)"]
        print(f"  {label:18s} raw {tf_raw:6.1f} img/s, extract {r['extract (files)']:6.1f} img/s "
              f"({r['extract (files)'] / tf_raw:.2f} of TensorFlow raw)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--size", type=int, default=150)
    p.add_argument("--no-s3", action="store_true", help="skip the s3:// run (no gateway)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every path between raw runs (median)")
    p.add_argument("--s3-readers", type=int, default=0, help="also extract from s3 with this many reader threads")
    p.add_argument("--rss", action="store_true", help="peak RSS of extraction on 1x and 4x the images")
    p.add_argument("--threads", action="store_true", help="compare TensorFlow thread settings")
    p.add_argument("--xla", action="store_true", help="also time the backbone compiled with XLA (jit_compile)")
    p.add_argument("--raw", type=int, default=0, metavar="PASSES",
                   help="only the backbone: TensorFlow vs OpenVINO f32 and BF16, interleaved batch by batch")
    p.add_argument("--decode", action="store_true", help="only the input path's per-image costs on one core")
    p.add_argument("--precision", choices=("f32", "bf16"), default=None,
                   help="OpenVINO precision of the paths (default: SCENE_INFERENCE_PRECISION, else f32)")
    p.add_argument("--runtime", choices=("auto", "tensorflow", "openvino"), default=None,
                   help="inference runtime of the paths (default: SCENE_INFERENCE_RUNTIME, else auto); small runs "
                        "use it too (auto would keep fewer than 2,000 images of a new model on TensorFlow)")
    p.add_argument("--child-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-rss", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if not INTEL.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs {INTEL} and {WEIGHTS} (see README: real data)")
    from scene.model import infer

    if a.precision:
        os.environ[infer.PRECISION_ENV] = a.precision  # paths and children
    os.environ[infer.ENV] = infer.selected(env={**os.environ, infer.ENV: a.runtime} if a.runtime else None)  # +children
    if a.decode:
        print(f"{a.images} photos, one core:")
        decode_costs(a.images)
        return
    if a.raw:
        print(f"{a.images} images, batch {BATCH}, {a.size} px, {os.cpu_count()} cores:")
        raw_ab(a.images, a.size, a.raw)
        return
    if a.child_run or a.child_rss:
        print(json.dumps(run(a.images, a.size, False) if a.child_run else extract_rss(a.images, a.size)))
        return
    report(run(a.images, a.size, not a.no_s3, a.xla, a.rounds, a.s3_readers), a.images)
    if a.rss:
        one = _child(["--child-rss", "--images", str(a.images), "--size", str(a.size)])
        four = _child(["--child-rss", "--images", str(4 * a.images), "--size", str(a.size)])
        print(f"\npeak RSS, extraction of 2 views: {a.images} images {one:.0f} MiB, {4 * a.images} images "
              f"{four:.0f} MiB ({four / one:.2f}x)")
    if a.threads:
        print("\nthread settings (fresh process each, no s3):")
        thread_sweep(a.images, a.size)
    print(f"\nthis process: peak RSS {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
