"""Reading one image: inspect it (size, mode, problems) and decode it to an RGB uint8 array.

Both the manifest builder and the tf.data pipeline go through here, so what validation accepts is
exactly what training can decode. Unusual modes (CMYK, palette, 16-bit, grayscale, alpha) are
converted to RGB and noted; unreadable files are rejected with a message naming the problem.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

# Decoding limits: a decompression bomb is refused before it is decoded.
MIN_SIDE = 32  # smaller images carry too little to classify (the Intel photos are 150 px)
MAX_PIXELS = 50_000_000  # ~7000x7000; above this an image is treated as a decompression bomb
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image

_SUPPORTED_FORMATS = {"JPEG", "PNG", "BMP", "GIF", "MPO"}
_CONVERT_NOTES = {
    "L": "grayscale converted to RGB",
    "LA": "grayscale+alpha converted to RGB (alpha dropped)",
    "1": "1-bit image converted to RGB",
    "P": "palette image converted to RGB",
    "PA": "palette+alpha image converted to RGB (alpha dropped)",
    "RGBA": "alpha channel dropped",
    "RGBX": "padding channel dropped",
    "CMYK": "CMYK converted to RGB",
    "YCbCr": "YCbCr converted to RGB",
    "I;16": "16-bit image scaled to 8 bits",
    "I;16B": "16-bit image scaled to 8 bits",
    "I;16L": "16-bit image scaled to 8 bits",
    "I": "32-bit integer image scaled to 8 bits",
    "F": "floating-point image scaled to 8 bits",
}


class ImageProblem(ValueError):
    """An image that cannot be used; the message names the problem (the caller adds the file)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the manifest records about a readable image."""

    width: int
    height: int
    mode: str  # the file's own PIL mode, before conversion
    format: str
    note: str  # "" or what conversion to RGB will do


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombWarning as err:
        raise ImageProblem(f"too large to decode safely ({err})") from err
    except Image.DecompressionBombError as err:
        raise ImageProblem(f"too large to decode safely ({err})") from err
    except Exception as err:
        raise ImageProblem(f"not a readable image ({type(err).__name__}: {err})") from err
    if img.format not in _SUPPORTED_FORMATS:
        raise ImageProblem(f"unsupported format {img.format}; use JPEG, PNG, BMP or GIF")
    return img


def inspect(data: bytes, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Check that ``data`` is a usable image, fully decoding it; raise :class:`ImageProblem` if not."""
    img = _open(data)
    w, h = img.size
    if w * h > max_pixels:
        raise ImageProblem(f"{w}x{h} = {w * h:,} pixels exceeds the {max_pixels:,}-pixel limit")
    if min(w, h) < min_side:
        raise ImageProblem(f"{w}x{h} is smaller than the {min_side}-pixel minimum side")
    try:
        img.load()  # a full decode: catches truncated and corrupt data
    except Exception as err:
        raise ImageProblem(f"corrupt or truncated image data ({type(err).__name__}: {err})") from err
    note = _CONVERT_NOTES.get(img.mode, "")
    if img.mode not in _CONVERT_NOTES and img.mode != "RGB":
        note = f"mode {img.mode} converted to RGB"
    if getattr(img, "n_frames", 1) > 1:
        note = "; ".join(filter(None, [note, f"first of {img.n_frames} frames used"]))
    return ImageInfo(width=w, height=h, mode=img.mode, format=str(img.format), note=note)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any supported mode to 8-bit RGB (16/32-bit and float scaled down, alpha dropped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=1.0)), 1.0)
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode to an ``(H, W, 3)`` uint8 RGB array (first frame of an animation)."""
    img = _open(data)
    img.seek(0)
    return np.asarray(to_rgb(img), dtype=np.uint8)
