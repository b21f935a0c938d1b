"""The training parameters of a run, one typed object: flows take it as one parameter, the CLI builds it from its
options, the Makefile fills it from ``make run`` variables. Every default is written here, once.

A named ``preset`` (:mod:`scene.train.presets`) fills every field the caller did not set; :meth:`TrainParams.resolved`
applies it, in one place. ``TrainParams(epochs=100, preset="best-cpu")`` keeps 100 epochs: it was set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from scene.metadata import DEFAULT_BACKBONES, DEFAULT_IMAGE_SIZE
from scene.train.presets import get_preset

if TYPE_CHECKING:
    from scene.train.fit import TrainConfig


class TrainParams(BaseModel):
    """What to train and how: the backbones and every setting a run may change (stored with each model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # None: train-all trains DEFAULT_BACKBONES, retrain the champion's backbone (else DEFAULT_BACKBONES)
    backbones: list[str] | None = None
    weights: str = "imagenet"  # "imagenet", "none" (random init) or a path / s3:// URI to a .weights.h5 file
    strategy: Literal["cached", "online"] = "cached"  # cached: head on stored features; online: backbone in the loop
    views: int = 2  # cached: augmented views per training image (0 = no augmentation)
    epochs: int = 100  # upper bound; early stopping on validation loss usually ends sooner
    image_size: int = DEFAULT_IMAGE_SIZE  # resize + zero-pad every image to this square
    finetune_layers: int = 0  # >0: unfreeze the top N backbone layers for a second phase
    finetune_blocks: int = 0  # >0: unfreeze the top N whole backbone blocks instead (block_16 + Conv_1 = 1)
    finetune_epochs: int = 10  # the fine-tuning phase's epochs (warm-up, then cosine decay to 0)
    finetune_lr: float = 1e-5  # peak learning rate of the fine-tuning phase
    finetune_warmup: float = 0.5  # epochs of linear warm-up before the cosine decay
    finetune_label_smoothing: float = 0.0  # fine-tuning's loss smooths the one-hot targets by this much
    finetune_mirror: bool = True  # False: a fine-tuned mirror model ships its plain path, not the mirror average
    finetune_ema: float = 0.0  # >0: fine-tuning ships (and validates) the moving average of its weights, this momentum
    finetune_refit: bool = False  # val chose the fine-tuning epochs; the shipped network then tunes on train + val
    finetune_ensemble: bool = False  # with finetune_refit: ship the average of the selection and refit networks
    mixed_precision: bool = False  # float16 compute, float32 output (GPUs)
    mirror: bool = False  # train also on mirrored images; the saved model averages over image and mirror
    refit: bool = False  # cached: once val has chosen the epochs, a fresh head trains on train + val and ships
    seed: int = 42  # seeds weights init, shuffling, augmentation and dropout
    preset: str | None = Field(None, description="a named recipe (e.g. best-cpu) filling every field not set")

    @field_validator("backbones")
    @classmethod
    def _some_backbones(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("backbones=[] — pass at least one of the registry's backbones (or leave it unset)")
        return list(dict.fromkeys(value)) if value else value

    def resolved(self) -> TrainParams:
        """These parameters with the preset's settings in every field not set by the caller (checked)."""
        if not self.preset:
            return self
        preset = get_preset(self.preset)
        unknown = sorted(set(preset) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"preset {self.preset!r} sets {unknown}, which are not training parameters")
        fill = {k: v for k, v in preset.items() if k not in self.model_fields_set}
        return self.model_validate({**self.model_dump(include=self.model_fields_set), **fill, "preset": self.preset})

    def names(self, default: list[str] | tuple[str, ...] = DEFAULT_BACKBONES) -> list[str]:
        """The backbones to train: the ones named here, else ``default``."""
        return list(self.backbones or default)

    def config(self, backbone: str) -> TrainConfig:
        """The :class:`~scene.train.fit.TrainConfig` of one backbone (raises naming a bad value)."""
        from scene.train.fit import TrainConfig  # TensorFlow loads only when a run is configured

        return TrainConfig(backbone=backbone, **self.model_dump(exclude={"backbones", "preset"}))

    def check(self, default: list[str] | tuple[str, ...] = DEFAULT_BACKBONES) -> None:
        """Fail fast, before any data is read, on an unknown backbone or a bad value."""
        for name in self.names(default):
            self.config(name)

    def facts(self) -> dict[str, Any]:
        """The settings a run summary shows."""
        return {"weights": self.weights, "strategy": self.strategy, "epochs": self.epochs,
                "image size": self.image_size, "mirror": self.mirror, "refit": self.refit,
                "preset": self.preset or "none"}
