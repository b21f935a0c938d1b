"""A generated six-class image set for demos and tests — a *smoke* dataset, not scene photos.

Each class is a drawn motif loosely evoking its scene (grid of windows, vertical trunks, bright
gradient, triangular peaks, horizontal waves, converging road lines) over shared random colours,
noise and clutter, so a classifier must learn shapes and layout, not a single colour: classes are
learnable but not trivially separable. Deterministic for a given seed.

Every file carries the JPEG comment :data:`scene.data.images.SYNTHETIC_MARK`, which travels with the image
(uploads, copies) so a manifest built from it says ``synthetic`` and a model trained on it is never promoted
automatically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from scene.data.images import SYNTHETIC_MARK
from scene.metadata import CLASS_NAMES


def _colour(rng: np.random.Generator, lo: int = 30, hi: int = 225) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _motif(draw: ImageDraw.ImageDraw, cls: str, size: int, rng: np.random.Generator) -> None:
    s = size
    ink = _colour(rng)
    if cls == "buildings":  # blocks with a grid of windows
        for _ in range(rng.integers(2, 4)):
            x0, w, h = rng.integers(0, s // 2), rng.integers(s // 5, s // 2), rng.integers(s // 3, s)
            draw.rectangle([x0, s - h, x0 + w, s], fill=ink)
            for wx in range(int(x0) + 4, int(x0 + w) - 4, 9):
                for wy in range(int(s - h) + 4, s - 4, 11):
                    draw.rectangle([wx, wy, wx + 4, wy + 5], fill=_colour(rng, 150, 255))
    elif cls == "forest":  # many vertical trunks with blobs of foliage
        for _ in range(rng.integers(8, 16)):
            x = rng.integers(0, s)
            draw.line([x, s, x + rng.integers(-4, 5), rng.integers(0, s // 2)], fill=ink, width=int(rng.integers(2, 5)))
            cx, cy, r = x, rng.integers(0, s // 2), rng.integers(4, 12)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_colour(rng))
    elif cls == "glacier":  # a bright field with jagged light-blue shards
        for _ in range(rng.integers(3, 7)):
            pts = [(int(rng.integers(0, s)), int(rng.integers(s // 3, s))) for _ in range(3)]
            draw.polygon(pts, fill=_colour(rng, 170, 255))
    elif cls == "mountain":  # overlapping triangular peaks reaching a skyline
        for _ in range(rng.integers(2, 5)):
            peak, base = int(rng.integers(0, s)), int(rng.integers(s // 3, s))
            draw.polygon([(peak - base, s), (peak, int(rng.integers(0, s // 2))), (peak + base, s)], fill=ink)
            ink = _colour(rng)
    elif cls == "sea":  # a horizon and horizontal wave lines
        horizon = int(rng.integers(s // 4, s // 2))
        draw.rectangle([0, horizon, s, s], fill=ink)
        for y in range(horizon + 3, s, int(rng.integers(4, 8))):
            off = int(rng.integers(0, 6))
            draw.line([(x, y + (2 if (x // 6 + off) % 2 else 0)) for x in range(0, s + 6, 6)],
                      fill=_colour(rng), width=1)
    elif cls == "street":  # road edges converging to a vanishing point, with kerbs
        vx, vy = int(rng.integers(s // 3, 2 * s // 3)), int(rng.integers(s // 4, s // 2))
        draw.polygon([(vx, vy), (0, s), (s, s)], fill=ink)
        for dx in (-s // 3, 0, s // 3):
            draw.line([(vx, vy), (s // 2 + dx * 2, s)], fill=_colour(rng, 180, 255), width=2)
    else:
        raise ValueError(f"no motif for class {cls!r}; known: {list(CLASS_NAMES)}")


def synth_image(cls: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One generated image of class ``cls``."""
    top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
    ramp = np.linspace(0, 1, size)[:, None, None]
    img = Image.fromarray(((1 - ramp) * top + ramp * bottom).repeat(size, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 4)):  # clutter shared by all classes
        x, y, r = rng.integers(0, size, 3)
        draw.ellipse([x, y, x + r // 3, y + r // 3], outline=_colour(rng))
    _motif(draw, cls, size, rng)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    noise = rng.normal(0, rng.uniform(4, 18), (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def make_synthetic(out: str | Path, per_class: int = 20, *, size: int = 64, seed: int = 0,
                   test_per_class: int = 0, classes: tuple[str, ...] = CLASS_NAMES) -> Path:
    """Write ``out/<class>/*.jpg`` (each marked generated); with a test set, ``out/seg_train|seg_test/<class>``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    sets = [("seg_train", per_class), ("seg_test", test_per_class)] if test_per_class else [("", per_class)]
    for sub, n in sets:
        root = out / sub if sub else out
        for cls in classes:
            (root / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                synth_image(cls, size, rng).save(root / cls / f"{cls}_{i:04d}.jpg", quality=90,
                                                   comment=SYNTHETIC_MARK)
    return out
