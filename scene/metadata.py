"""Class names, image size and other facts every module takes from one place."""

from __future__ import annotations

# The Intel Image Classification classes, in label-index order.
CLASS_NAMES: tuple[str, ...] = ("buildings", "forest", "glacier", "mountain", "sea", "street")

DEFAULT_IMAGE_SIZE = 150  # the Intel photos are 150x150
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
SPLITS: tuple[str, ...] = ("train", "val", "test")
