"""Real-data figures for the data audits (issue 11): label issues, near-duplicate threshold, drift.

Runs on ``../shared/data/intel/seg_train`` with the offline MobileNetV2 ImageNet weights at 150 px::

    .venv/bin/python benchmarks/audit_real.py extract --cache /tmp/scene-cache --out /tmp/audit-real
    .venv/bin/python benchmarks/audit_real.py labels --out /tmp/audit-real
    .venv/bin/python benchmarks/audit_real.py duplicates --cache /tmp/scene-cache --out /tmp/audit-real
    .venv/bin/python benchmarks/audit_real.py drift --cache /tmp/scene-cache --out /tmp/audit-real

``extract`` stores the plain-view features of every image in ``OUT/features.npz`` (keys, labels, splits), so
the other steps do not depend on the feature-cache namespace staying the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INTEL = REPO.parent / "shared" / "data" / "intel" / "seg_train"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet_notop.weights.h5"


def _setup(cache: str):
    from scene.data.dataset import build_dataset
    from scene.train import fit

    ds = build_dataset(str(INTEL))
    cfg = fit.TrainConfig(backbone="mobilenetv2", weights=str(WEIGHTS), views=0, image_size=150)
    weights = fit.weights_for(cfg)
    return ds, cfg, weights, fit.feature_cache(cfg, weights, cache)


def cmd_extract(a: argparse.Namespace) -> None:
    from scene.train import features

    ds, cfg, weights, cache = _setup(a.cache)
    start = time.perf_counter()
    stats = features.extract(ds.manifest, [0], backbone=cfg.backbone, weights=weights, size=cfg.image_size,
                             cache=cache, seed=cfg.seed,
                             progress=lambda s, d, t: print(f"{s} {d}/{t}", file=sys.stderr) if d % 640 == 0 else None)
    x, y = features.gather(cache, ds.manifest, [0])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    m = ds.manifest
    np.savez(out / "features.npz", x=x, y=y, keys=m["key"].to_numpy(), sha=m["sha256"].to_numpy(),
             split=m["split"].to_numpy(), label=m["label"].to_numpy(), classes=np.asarray(ds.class_names))
    print(json.dumps({"images": len(m), "computed": stats.computed, "seconds": round(time.perf_counter() - start)}))


def _load(out: str):
    import pandas as pd

    z = np.load(Path(out) / "features.npz", allow_pickle=True)
    rows = pd.DataFrame({"key": z["keys"], "sha256": z["sha"], "split": z["split"], "label": z["label"],
                         "label_index": z["y"]})
    return z["x"], rows, tuple(str(c) for c in z["classes"])


def _keras_head(x_tr, y_tr, x_va, y_va, k: int, seed: int = 42):
    """The project's head (scene.model.network.build_head), trained as the cached strategy trains it."""
    import keras

    from scene.model.network import build_head, compile_model

    keras.utils.set_random_seed(seed)
    head = build_head(x_tr.shape[1], k)
    compile_model(head, 3e-4)
    oh = keras.utils.to_categorical
    head.fit(x_tr, oh(y_tr, k), validation_data=(x_va, oh(y_va, k)), epochs=100, batch_size=64, verbose=0,
             callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)])
    return head


def _montage(paths: list[str], captions: list[str], dest: Path, cols: int = 5, size: int = 150) -> None:
    from PIL import Image, ImageDraw

    rows_n = (len(paths) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * size, rows_n * (size + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (p, cap) in enumerate(zip(paths, captions, strict=True)):
        img = Image.open(p).convert("RGB").resize((size, size))
        x, y = (i % cols) * size, (i // cols) * (size + 14)
        sheet.paste(img, (x, y + 14))
        draw.text((x + 2, y + 1), cap, fill="black")
    sheet.save(dest)


def cmd_labels(a: argparse.Namespace) -> None:
    from sklearn.metrics import f1_score

    from scene.audit.labels import audit_labels
    from scene.evaluation.metrics import mcnemar

    x, rows, classes = _load(a.out)
    start = time.perf_counter()
    audit = audit_labels(x, rows, classes, folds=5, seed=0)
    seconds = time.perf_counter() - start
    out = Path(a.out)
    audit.issues.to_csv(out / "label_issues.csv", index=False)
    top = audit.issues.head(50)
    for part in range(0, len(top), 25):
        chunk = top.iloc[part:part + 25]
        _montage(chunk["key"].tolist(), [f"{r.rank} {r.label[:4]}>{r.suggested[:4]}" for r in chunk.itertuples()],
                 out / f"top50_{part // 25 + 1}.png")
    tr, va, te = (rows["split"] == s for s in ("train", "val", "test"))
    # the paired F1 test: flag again on train+val only, so no test image or label decides what is dropped
    pool = rows[~te].reset_index(drop=True)
    flagged = set(audit_labels(x[~te.to_numpy()], pool, classes, folds=5, seed=0).issues["key"])
    keep = tr & ~rows["key"].isin(flagged)
    k = len(classes)
    y = rows["label_index"].to_numpy()
    res = {}
    for name, mask in (("with", tr), ("without", keep)):
        head = _keras_head(x[mask.to_numpy()], y[mask.to_numpy()], x[va.to_numpy()], y[va.to_numpy()], k)
        pred = head.predict(x[te.to_numpy()], verbose=0).argmax(1)
        res[name] = pred == y[te.to_numpy()]
        res[name + "_f1"] = float(f1_score(y[te.to_numpy()], pred, average="weighted"))
    p, b, c = mcnemar(res["without"], res["with"])
    print(json.dumps({"audited": audit.audited, "flagged": audit.flagged, "seconds": round(seconds, 1),
                      "flagged_train_by_train_val_audit": int((tr & rows["key"].isin(flagged)).sum()),
                      "top50_split": audit.issues.head(50)["split"].value_counts().to_dict(),
                      "test_images": int(te.sum()), "f1_with": round(res["with_f1"], 4),
                      "f1_without": round(res["without_f1"], 4), "mcnemar_p": round(p, 4),
                      "only_without_right": b, "only_with_right": c,
                      "pairs": audit.pairs().head(8).to_dict("records")}, indent=1))


def _made_rows(src_rows, folder: Path, make) -> pd.DataFrame:  # noqa: F821
    """Write ``make(PIL image)`` of each row's photo into ``folder``; manifest-like rows of the new files."""
    import hashlib

    import pandas as pd
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    keys, shas = [], []
    for i, key in enumerate(src_rows["key"]):
        img, quality = make(Image.open(key).convert("RGB"), i)
        dest = folder / f"{i:04d}.jpg"
        img.save(dest, quality=quality)
        keys.append(str(dest))
        shas.append(hashlib.sha256(dest.read_bytes()).hexdigest())
    return pd.DataFrame({"key": keys, "sha256": shas})


def _crop(img, f: float):
    w, h = img.size
    return img.crop((int(w * f), int(h * f), w - int(w * f), h - int(h * f)))


COPIES = {  # made copies: (PIL image, i) -> (image, JPEG quality)
    "resize 0.5": lambda im, i: (im.resize((im.size[0] // 2, im.size[1] // 2)), 90),
    "resize 0.75": lambda im, i: (im.resize((im.size[0] * 3 // 4, im.size[1] * 3 // 4)), 90),
    "jpeg q30": lambda im, i: (im, 30),
    "jpeg q60": lambda im, i: (im, 60),
    "crop 10%": lambda im, i: (_crop(im, 0.05), 90),
    "crop 5%": lambda im, i: (_crop(im, 0.025), 90),
}
THRESHOLDS = np.array([0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97])


def cmd_duplicates(a: argparse.Namespace) -> None:
    """Each sampled photo's copy (found when cosine ≥ t) vs its nearest *other* photo (a false pair when ≥ t)."""
    import tempfile

    import pandas as pd

    from scene.audit.duplicates import normalise, similar_pairs, threshold_curve
    from scene.audit.source import cached_features

    x, rows, _ = _load(a.out)
    _, cfg, weights, _ = _setup(a.cache)
    pick = rows.sample(150, random_state=0).reset_index(drop=True)
    order = np.array([int(rows.index[rows["key"] == k][0]) for k in pick["key"]])
    z = normalise(x)
    sims = z[order] @ z.T
    for r, i in enumerate(order):
        sims[r, (rows["sha256"] == rows["sha256"][i]).to_numpy()] = -1  # itself and identical files
    nearest = sims.max(1)
    tmp = Path(tempfile.mkdtemp(prefix="audit-copies-"))
    table = []
    all_copies = []
    for name, make in COPIES.items():
        xc = cached_features(_made_rows(pick, tmp / name.replace(" ", "_"), make), cfg, weights, a.cache)
        cs = (z[order] * normalise(xc)).sum(1)
        all_copies.append(cs)
        table.append({"copy": name, "median cosine": round(float(np.median(cs)), 3),
                      **{f"recall@{t:.2f}": round(float((cs >= t).mean()), 2) for t in THRESHOLDS}})
    curve = threshold_curve(np.concatenate(all_copies), np.repeat(nearest, len(COPIES)), THRESHOLDS)
    i, j, c = similar_pairs(x, 0.80)
    keep = rows["sha256"].to_numpy()[i] != rows["sha256"].to_numpy()[j]
    s = rows["split"].to_numpy()
    c, leak = c[keep], ((s[i] == "test") != (s[j] == "test"))[keep]
    curve["dataset_pairs"] = [int((c >= t).sum()) for t in curve["threshold"]]
    curve["dataset_leak_pairs"] = [int(((c >= t) & leak).sum()) for t in curve["threshold"]]
    curve.to_csv(Path(a.out) / "duplicate_threshold.csv", index=False)
    pd.DataFrame(table).to_csv(Path(a.out) / "duplicate_recall_by_copy.csv", index=False)
    print(pd.DataFrame(table).to_string(index=False))
    print(curve.round(3).to_string(index=False))


def cmd_drift(a: argparse.Namespace) -> None:
    import tempfile

    from PIL import ImageOps

    from scene.audit import drift
    from scene.audit.labels import linear_head, out_of_fold_probs
    from scene.audit.source import cached_features

    x, rows, classes = _load(a.out)
    _, cfg, weights, _ = _setup(a.cache)
    tr = (rows["split"] == "train").to_numpy()
    y = rows["label_index"].to_numpy()
    ref = drift.fit_reference(x[tr], out_of_fold_probs(x[tr], y[tr], len(classes)).argmax(1), classes)
    head = linear_head().fit(x[tr], y[tr])
    held = rows[rows["split"] == "test"].sample(500, random_state=1)
    tmp = Path(tempfile.mkdtemp(prefix="audit-drift-"))
    night = _made_rows(held, tmp / "night", lambda im, i: (im.point(lambda v: int(v * 0.35)), 90))
    gray = _made_rows(held, tmp / "gray", lambda im, i: (ImageOps.grayscale(im).convert("RGB"), 90))
    out = {}
    sets = (("held_back", x[held.index.to_numpy()]), ("night", cached_features(night, cfg, weights, a.cache)),
            ("grayscale", cached_features(gray, cfg, weights, a.cache)))
    for name, feats in sets:
        r = drift.compare(ref, feats, head.predict(feats))
        out[name] = {k: v for k, v in r.to_dict().items() if k != "class_mix"}
    print(json.dumps(out, indent=1, default=float))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("extract", cmd_extract), ("labels", cmd_labels), ("duplicates", cmd_duplicates),
                     ("drift", cmd_drift)):
        s = sub.add_parser(name)
        s.add_argument("--cache", default="/tmp/scene-cache")
        s.add_argument("--out", default="/tmp/audit-real")
        s.add_argument("--threshold", type=float, default=0.95)
        s.set_defaults(func=fn)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
