"""Class names, image size, split names and other facts every module takes from one place."""

from __future__ import annotations

# The Intel Image Classification classes, in label-index order.
CLASS_NAMES: tuple[str, ...] = ("buildings", "forest", "glacier", "mountain", "sea", "street")

DEFAULT_IMAGE_SIZE = 150  # the Intel photos are 150x150
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")
SPLITS: tuple[str, ...] = ("train", "val", "test")

# the backbones train-all compares when none are named (a preset may name others)
DEFAULT_BACKBONES: tuple[str, ...] = ("resnet50", "resnet101v2", "efficientnetb0", "vgg16")
DEMO_DATA_URI = "s3://scene-data/datasets/demo/"  # the dataset `make run` uploads and train-all/default trains
READY_MARKER = "_READY"  # an object of this name under a dataset root announces "upload finished: retrain now"
