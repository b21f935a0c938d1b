"""Decoding and checking single images: every mode becomes RGB, every broken file a clear problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from scene import images


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _rgb(w: int = 64, h: int = 48) -> Image.Image:
    return Image.new("RGB", (w, h), (200, 30, 40))


def _noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("mode", "fmt", "note"),
    [
        ("RGB", "JPEG", ""),
        ("L", "PNG", "grayscale"),
        ("P", "PNG", "palette"),
        ("CMYK", "JPEG", "CMYK"),
        ("RGBA", "PNG", "alpha"),
        ("LA", "PNG", "alpha"),
        ("RGB", "BMP", ""),
        ("P", "GIF", "palette"),
    ],
)
def test_modes_convert_to_rgb_with_a_note(mode: str, fmt: str, note: str) -> None:
    data = _encode(_rgb().convert(mode), fmt)
    info = images.inspect(data)
    arr = images.decode_rgb(data)
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
    assert info.mode == mode and note in info.note


def test_16_bit_is_scaled_not_clipped() -> None:
    data = _encode(Image.fromarray(np.full((40, 40), 40000, np.uint16)), "PNG")
    assert "16-bit" in images.inspect(data).note
    assert images.decode_rgb(data)[0, 0, 0] == int(40000 / 65535 * 255)


def test_gif_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert "first of 2 frames" in images.inspect(buf.getvalue()).note
    assert images.decode_rgb(buf.getvalue())[0, 0, 0] > 200


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty file"),
        (b"this is not an image", "not a readable image"),
        (_encode(_noise(), "JPEG")[:3000], "corrupt or truncated"),
        (_encode(_rgb(20, 64), "PNG"), "smaller than the 32-pixel minimum"),
        (_encode(_rgb(), "TIFF"), "unsupported format TIFF"),
    ],
)
def test_bad_images_raise_a_named_problem(data: bytes, problem: str) -> None:
    with pytest.raises(images.ImageProblem, match=problem):
        images.inspect(data)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (4000, 4000)), "PNG")
    with pytest.raises(images.ImageProblem, match="pixel limit"):
        images.inspect(data, max_pixels=1_000_000)
    bomb = _encode(Image.new("1", (20000, 20000)), "PNG")  # 400 Mpx, a few KB on disk
    with pytest.raises(images.ImageProblem, match=r"too large|pixel limit"):
        images.inspect(bomb)
