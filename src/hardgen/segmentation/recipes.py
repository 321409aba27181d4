"""How a segmenter trains: the per-arch recipe (``segment.*`` with the arch entry's own keys on top) and its parts.

Each ``segment.archs`` entry may carry its own training recipe (optimizer, learning rate, weight decay, step decay,
batch size, iterations, multi-scale, gradient clip, loss, resize), overriding the ``segment.*`` defaults of the same name for
that arch only (:func:`resolve_recipe`), so archs with different released recipes share one run; every policy of one
arch gets that arch's budget. PraNet's multi-scale training rescales each batch to :func:`scaled_size` of every scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hardgen.config.settings import SegmentConfig, SegmenterConfig
from hardgen.segmentation.datasets import (
    AUGMENTATIONS,
    RESIZES,
    SIZE_MULTIPLE,
    check_size,
)
from hardgen.segmentation.losses import STRUCTURE_LOSSES

OPTIMIZERS = ("adam", "adamw")

#: ``segment.archs.<key>`` recipe keys that override the ``segment.*`` value of the same name (:func:`resolve_recipe`):
#: the arch entry's keys that are also ``segment.*`` keys (hardgen.config.settings).
ARCH_RECIPE_KEYS: tuple[str, ...] = tuple(key for key in SegmenterConfig.keys() if key in SegmentConfig.keys())
#: The ``segment.*`` recipe keys every arch shares (``size``, ``augment``): those a run reads that no arch overrides.
SHARED_RECIPE_KEYS: tuple[str, ...] = tuple(key for key in SegmentConfig.job_keys("run") if key not in ARCH_RECIPE_KEYS)

#: The training recipe of a run, recorded in ``run.json`` (and ``runs.csv``) beside
#: :data:`hardgen.benchmark.records.RUN_FIELDS`.
RECIPE_FIELDS: tuple[str, ...] = (
    "optimizer", "learning_rate", "weight_decay", "lr_decay_at", "lr_decay_factor", "multi_scale", "grad_clip",
    "augment", "loss", "resize",
)


def parse_lr_decay(value: Any, where: str) -> tuple[float, float] | None:
    """``segment.lr_decay`` (a mapping with keys at, factor, or an ``(at, factor)`` pair; None) as ``(at, factor)``;
    raise ValueError naming ``where`` unless ``0 < at < 1`` and ``factor > 0``."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        if set(value) != {"at", "factor"}:
            raise ValueError(f"{where}: expected keys at, factor, got {sorted(value)}")
        at, factor = value["at"], value["factor"]
    else:
        at, factor = value
    at, factor = float(at), float(factor)
    if not (0 < at < 1) or not (factor > 0):
        raise ValueError(f"{where}: need 0 < at < 1 and factor > 0, got at {at}, factor {factor}")
    return at, factor


@dataclass(frozen=True)
class SegmentRecipe:
    """How one arch trains (:func:`hardgen.segmentation.training.train_segmenter`): ``segment.*`` with the arch
    entry's own recipe keys on top (:func:`resolve_recipe` builds it from the config).

    ``size``: the training side (``segment.size``, a multiple of 32). The budget is ``iterations`` batches of
    ``batch_size`` pairs; each batch takes one optimiser step per ``multi_scale`` entry (rescaled to
    :func:`scaled_size`). ``optimizer`` adam | adamw with ``weight_decay``; ``lr_decay`` ``(at, factor)``: the
    learning rate is multiplied by ``factor`` after ``round(at × iterations)`` iterations (Polyp-PVT's released
    recipe: × 0.1 from half of the budget; a mapping with keys at, factor is accepted); None = constant.
    ``grad_clip``: PraNet's gradient value clipping; None or <= 0 disables it (stored as None). ``augment``:
    ``segment.augment`` (:func:`hardgen.segmentation.datasets.train_transform`). ``loss``: the structure loss's kind
    (``segment.loss``, :data:`hardgen.segmentation.losses.STRUCTURE_LOSSES`: hardgen's boundary-weighted BCE or the
    released code's plain BCE). ``resize``: how the training pairs reach ``size`` (``segment.resize``,
    :data:`hardgen.segmentation.datasets.RESIZES`: hardgen's binary masks, or the released loaders' PIL bilinear with
    soft masks). Checked on construction: a bad value raises ValueError naming its ``segment.*`` key.
    """

    size: int
    learning_rate: float
    batch_size: int
    iterations: int
    grad_clip: float | None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_decay: tuple[float, float] | None = None
    multi_scale: tuple[float, ...] = (1.0,)
    augment: str = "hardgen"
    loss: str = "structure"
    resize: str = "hardgen"

    def __post_init__(self) -> None:
        check_size(self.size)
        iterations = self.iterations
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
            raise ValueError(f"segment.iterations: must be an integer >= 1, got {iterations!r}")
        if self.batch_size < 1:
            raise ValueError(f"segment.batch_size: must be >= 1, got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"segment.learning_rate: must be a positive number, got {self.learning_rate}")
        if not self.multi_scale or any(not (s > 0) for s in self.multi_scale):
            raise ValueError(f"segment.multi_scale: need positive scales, got {list(self.multi_scale)}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"segment.augment: {self.augment!r} is not one of {list(AUGMENTATIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"segment.optimizer: {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.loss not in STRUCTURE_LOSSES:
            raise ValueError(f"segment.loss: {self.loss!r} is not one of {list(STRUCTURE_LOSSES)}")
        if self.resize not in RESIZES:
            raise ValueError(f"segment.resize: {self.resize!r} is not one of {list(RESIZES)}")
        # normalised in place (frozen): one spelling of each value for the training loop and run.json
        object.__setattr__(self, "iterations", int(iterations))
        object.__setattr__(self, "multi_scale", tuple(self.multi_scale))
        object.__setattr__(self, "lr_decay", parse_lr_decay(self.lr_decay, "segment.lr_decay"))
        if self.grad_clip is not None and not self.grad_clip > 0:
            object.__setattr__(self, "grad_clip", None)

    def record(self) -> dict[str, Any]:
        """The :data:`RECIPE_FIELDS` of ``run.json``."""
        return {
            "optimizer": self.optimizer, "learning_rate": float(self.learning_rate),
            "weight_decay": float(self.weight_decay),
            "lr_decay_at": None if self.lr_decay is None else float(self.lr_decay[0]),
            "lr_decay_factor": None if self.lr_decay is None else float(self.lr_decay[1]),
            "multi_scale": [float(s) for s in self.multi_scale],
            "grad_clip": None if self.grad_clip is None else float(self.grad_clip),
            "augment": self.augment,
            "loss": self.loss,
            "resize": self.resize,
        }


def resolve_recipe(segment: Mapping[str, Any], entry: Mapping[str, Any], config_key: str) -> SegmentRecipe:
    """The recipe of ``segment.archs.<config_key>``: each of :data:`ARCH_RECIPE_KEYS` the arch entry sets (not null)
    overrides the ``segment.*`` value of the same name for that arch; null (the schema's default) inherits it.
    ``size`` and ``augment`` are ``segment.size`` and ``segment.augment`` for every arch.

    ``segment`` is the config section with the schema's defaults filled in
    (:func:`hardgen.config.validation.apply_defaults`); a key missing from both raises ValueError naming it.
    """
    merged = {k: segment[k] for k in ARCH_RECIPE_KEYS if k in segment}
    where = {k: f"segment.{k}" for k in ARCH_RECIPE_KEYS}
    for key in ARCH_RECIPE_KEYS:
        if entry.get(key) is not None:
            merged[key] = entry[key]
            where[key] = f"segment.archs.{config_key}.{key}"
    missing = [f"segment.{k}" for k in ARCH_RECIPE_KEYS if k not in merged]
    missing += [f"segment.{k}" for k in SHARED_RECIPE_KEYS if k not in segment]
    if missing:
        raise ValueError(f"segment.archs.{config_key}: no value for {missing} (set it in segment or the arch entry)")
    optimizer = str(merged["optimizer"]).lower()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{where['optimizer']}: {merged['optimizer']!r} is not one of {list(OPTIMIZERS)}")
    weight_decay = float(merged["weight_decay"])
    if weight_decay < 0:
        raise ValueError(f"{where['weight_decay']}: must be >= 0, got {weight_decay}")
    loss = str(merged["loss"])
    if loss not in STRUCTURE_LOSSES:
        raise ValueError(f"{where['loss']}: {merged['loss']!r} is not one of {list(STRUCTURE_LOSSES)}")
    resize = str(merged["resize"])
    if resize not in RESIZES:
        raise ValueError(f"{where['resize']}: {merged['resize']!r} is not one of {list(RESIZES)}")
    grad_clip = merged["grad_clip"]
    return SegmentRecipe(
        size=int(segment["size"]),
        optimizer=optimizer,
        learning_rate=float(merged["learning_rate"]),
        weight_decay=weight_decay,
        lr_decay=parse_lr_decay(merged["lr_decay"], where["lr_decay"]),
        batch_size=int(merged["batch_size"]),
        iterations=int(merged["iterations"]),
        multi_scale=tuple(float(x) for x in merged["multi_scale"]),
        grad_clip=None if grad_clip is None else float(grad_clip),
        augment=str(segment["augment"]),
        loss=loss,
        resize=resize,
    )


def make_optimizer(params: Any, name: str, lr: float, weight_decay: float, device: torch.device
                   ) -> torch.optim.Optimizer:
    """Adam (PraNet; L2 weight decay) or AdamW (Polyp-PVT; decoupled weight decay), torch's fused kernel where it has
    one (the same update in one pass over each tensor: a CNN step 13 % faster on the CPU)."""
    fused = True if device.type in ("cpu", "cuda") else None
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"segment.optimizer: {name!r} is not one of {list(OPTIMIZERS)}")


def scaled_size(size: int, scale: float) -> int:
    """PraNet's multi-scale side: ``round(size * scale / 32) * 32``, at least 32."""
    return max(SIZE_MULTIPLE, int(round(size * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
