"""Decoding and checking single images: every mode becomes RGB, every broken file a clear problem."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scene.data import images


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
        ("RGB", "WEBP", ""),
        ("RGB", "TIFF", ""),
        ("I;16", "TIFF", "16-bit"),
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
        (_encode(_rgb(), "PPM"), "unsupported format PPM"),
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


def _arrow(w: int = 80, h: int = 40) -> Image.Image:
    """A picture whose orientation is visible: a red left half, a blue right half."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_exif_orientation_is_applied_before_anything_else(fmt: str) -> None:
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view) is decoded upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    _arrow().save(buf, fmt, exif=exif)
    data = buf.getvalue()
    info = images.inspect(data)
    assert (info.width, info.height) == (40, 80)
    assert "EXIF orientation 6" in info.note or fmt == "TIFF"  # Pillow rotates TIFF itself while loading
    arr = images.decode_rgb(data)
    assert arr.shape == (80, 40, 3)
    top, bottom = arr[5, 20].astype(int), arr[-5, 20].astype(int)
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red (the old left) is now on top


def test_pipeline_decodes_webp_and_tiff_like_jpeg(tmp_path: Path) -> None:
    """The tf.data pipeline reads every accepted format through images.decode_rgb, upright and padded."""
    import pandas as pd

    from scene.model.pipeline import image_dataset

    exif = Image.Exif()
    exif[0x0112] = 6
    keys = []
    for fmt, suffix in (("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tif")):
        path = tmp_path / f"a{suffix}"
        _arrow().save(path, fmt, exif=exif)
        keys.append(str(path))
    rows = pd.DataFrame({"key": keys, "label_index": [0, 0, 0]})
    batches = list(image_dataset(rows, 40, num_classes=6, batch_size=3).as_numpy_iterator())
    x = batches[0][0]
    assert x.shape == (3, 40, 40, 3)
    for img in x:  # upright: red on top; the 40x80 picture is padded left and right, not top and bottom
        assert img[2, 20, 0] > 200 and img[-3, 20, 2] > 200 and img[20, 1].max() < 10


def test_generated_images_carry_the_synthetic_mark(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    from scene.data.synth import make_synthetic

    root = make_synthetic(tmp_path / "d", 1, size=40, classes=("sea",))
    assert images.inspect((root / "sea" / "sea_0000.jpg").read_bytes()).synthetic
    assert not images.inspect(_encode(_rgb(), "JPEG")).synthetic
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", images.SYNTHETIC_MARK)
    buf = io.BytesIO()
    _rgb().save(buf, "PNG", pnginfo=text)
    assert images.inspect(buf.getvalue()).synthetic


def _pillow_rgb(data: bytes) -> np.ndarray:
    """What Pillow alone decodes (the path every non-plain JPEG takes)."""
    from PIL import ImageOps

    return np.asarray(images.to_rgb(ImageOps.exif_transpose(images._open(data))), np.uint8)


@pytest.mark.parametrize(("mode", "options"), [("RGB", {}), ("RGB", {"subsampling": 0}), ("RGB", {"subsampling": 1}),
                                                ("RGB", {"progressive": True}), ("L", {})])
def test_plain_jpegs_decode_through_libjpeg_turbo_to_pillows_exact_pixels(mode: str, options: dict) -> None:
    buf = io.BytesIO()
    _noise().convert(mode).save(buf, "JPEG", quality=87, **options)
    data = buf.getvalue()
    fast = images._turbo_jpeg(data)
    assert fast is not None, "a plain JPEG takes the libjpeg-turbo path"
    assert fast.dtype == np.uint8 and np.array_equal(fast, _pillow_rgb(data))
    assert np.array_equal(images.decode_rgb(data), fast)


def test_jpegs_with_exif_cmyk_or_damage_go_through_pillow() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    _arrow().save(buf, "JPEG", exif=exif)
    assert images._has_exif(buf.getvalue()) and images._turbo_jpeg(buf.getvalue()) is None  # orientation: Pillow's
    cmyk = _encode(_rgb().convert("CMYK"), "JPEG")
    assert images._turbo_jpeg(cmyk) is None
    assert np.array_equal(images.decode_rgb(cmyk), _pillow_rgb(cmyk))
    truncated = _encode(_noise(), "JPEG")[:3000]
    assert images._turbo_jpeg(truncated) is None
    with pytest.raises(images.ImageProblem, match="corrupt or truncated"):
        images.decode_rgb(truncated)
    assert not images._has_exif(_encode(_noise(), "JPEG"))


@pytest.mark.real
def test_every_intel_photo_decodes_to_pillows_exact_pixels(intel_dir: Path) -> None:
    """Decoding through libjpeg-turbo changed no pixel of the real photos: all 8,741 of them, exactly."""
    photos = sorted(intel_dir.glob("*/*.jpg"))
    assert len(photos) > 8000
    for path in photos:
        data = path.read_bytes()
        fast = images._turbo_jpeg(data)
        assert fast is not None and np.array_equal(fast, _pillow_rgb(data)), path
