"""Polyp segmenters (smp's and the field's), PraNet's structure loss and per-arch training recipes.

The downstream benchmark trains one segmenter per (architecture, training subset, seed) and evaluates
it with :mod:`hardgen.evaluation.metrics`. Architectures are named strings: smp's registry (``smp.create_model``), or the
field's polyp segmenters of :mod:`hardgen.models.archs` (``PraNet``, ``PolypPVT``, ``HFSegformer``), so the config
chooses families without code changes. PraNet and Polyp-PVT return several deeply supervised maps: the loss is
the structure loss summed over them (as their authors train) and :func:`predict_logits` is the one place every
inference path gets the single prediction map from (PraNet: the last map; Polyp-PVT: the sum of its two).

Each ``segment.archs`` entry may carry its own training recipe (:class:`Recipe`: optimizer, learning rate,
weight decay, step decay, batch size, iterations, multi-scale, gradient clip), overriding the ``segment.*``
defaults of the same name for that arch only, so archs with different released recipes share one run; every
policy of one arch gets that arch's budget.

Training follows PraNet: Adam, multi-scale training (each batch is rescaled to
``round(size * s / 32) * 32`` for every ``s`` in ``multi_scale`` and each scale takes its own
optimiser step), gradient *value* clipping (PraNet's ``clip_gradient`` clamps every gradient entry
to ``[-grad_clip, grad_clip]``), and the structure loss (weighted BCE + weighted IoU).

Budgets are fixed in **iterations** (batches), not epochs: every run of one architecture and seed
takes the same number of batches and so sees the same number of images whatever the size of its
training set, and a policy with more synthetic images does not get more optimiser steps. The
batches come from an endless seeded stream of shuffled passes over the run's pairs
(:class:`SeededEpochStream`), cut after ``iterations`` batches. The benchmark's real-only judge of the
feedback generator is a separate run whose training seed is offset by :data:`JUDGE_SEED_OFFSET`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from hardgen.core.io import read_mask, read_pair, write_csv, write_json
from hardgen.core.weights import load_state_dict, save_state_dict
from hardgen.models.archs import (
    build_field_arch,
    encoder_problem,
    is_field_arch,
    map_count,
    output_maps,
    predict_logits,
)

log = logging.getLogger("hardgen.segmentation.segment")

#: ImageNet statistics: every smp/timm encoder expects inputs normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: smp encoders downsample by 32, so every input side must be a multiple of it.
SIZE_MULTIPLE = 32

#: PraNet's structure loss: kernel of the local average that finds pixels near the mask boundary.
BOUNDARY_KERNEL = 31
#: ... and how much more those boundary pixels weigh than the rest.
BOUNDARY_WEIGHT = 5.0

#: The feedback judge (rule ``train_judge``) trains with seed ``JUDGE_SEED_OFFSET + feedback.judge_seed``.
#: Benchmark seeds are below 2**31 (schema), so the judge's initialisation and data stream never equal a
#: benchmark run's, even when ``feedback.judge_seed`` equals one of ``segment.seeds``.
JUDGE_SEED_OFFSET = 2**31

#: Fields of the per-run record (``run.json`` beside each model; ``results/tables/runs.csv``).
RUN_FIELDS: tuple[str, ...] = (
    "arch", "policy", "ratio", "seed", "real_images", "synthetic_images", "iterations", "images_seen",
)

#: The training recipe of a run, recorded in ``run.json`` (and ``runs.csv``) beside :data:`RUN_FIELDS`.
RECIPE_FIELDS: tuple[str, ...] = (
    "optimizer", "learning_rate", "weight_decay", "lr_decay_at", "lr_decay_factor", "multi_scale", "grad_clip",
    "augment",
)

#: ``segment.archs.<key>`` entries: what builds the model (:class:`SegmenterSpec`), the per-arch recipe keys that
#: override ``segment.*`` (:func:`resolve_recipe`) and ``published`` (the anchors file's model name; the report's).
SPEC_KEYS = ("arch", "encoder", "encoder_weights", "checkpoint")
ARCH_RECIPE_KEYS = ("optimizer", "learning_rate", "weight_decay", "lr_decay", "batch_size", "iterations",
                    "multi_scale", "grad_clip")
ARCH_KEYS = (*SPEC_KEYS, *ARCH_RECIPE_KEYS, "published")

#: ``segment.augment``: the training augmentation (pranet: the released recipes' resize only, the multi-scale
#: rescaling being the training loop's; hardgen: flips, a small affine and colour jitter on top).
AUGMENTATIONS = ("pranet", "hardgen")
OPTIMIZERS = ("adam", "adamw")


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class SegmenterSpec:
    """What segmenter to build: an architecture and encoder, plus optional local weights.

    ``arch``: smp architecture name (``Unet``, ``FPN``, ``Segformer``, ...; case-insensitive) or a field arch of
    :mod:`hardgen.models.archs` (``PraNet``, ``PolypPVT``: a timm encoder name; ``HFSegformer``: a MiT preset, mit-b0 ...).
    ``encoder``: smp encoder name (``resnet18``, ``mit_b0``) or a timm model as ``tu-<name>``.
    ``encoder_weights``: pretrained-weight tag (``imagenet``) or None for random init.
    ``checkpoint``: local ``.safetensors``/plain-tensor file holding the encoder's or the whole
    model's weights (for clusters without internet); loaded through :mod:`hardgen.core.weights`.
    """

    arch: str
    encoder: str
    encoder_weights: str | None = None
    checkpoint: str | None = None

    @classmethod
    def from_config(cls, entry: dict[str, Any], config_key: str) -> SegmenterSpec:
        """Build a spec from one ``segment.archs.<config_key>`` config entry (keys arch, encoder, ...).

        The entry's recipe keys and ``published`` are accepted and left to :func:`resolve_recipe` / the report.
        """
        where = f"segment.archs.{config_key}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with keys arch, encoder, got {type(entry).__name__}")
        for key in ("arch", "encoder"):
            if not entry.get(key):
                raise ValueError(f"{where}.{key}: missing or empty")
        # published: the anchor model the report compares this arch's real-only runs with (hardgen.evaluation.reproduction)
        unknown = set(entry) - set(ARCH_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        return cls(
            arch=str(entry["arch"]),
            encoder=str(entry["encoder"]),
            encoder_weights=entry.get("encoder_weights"),
            checkpoint=entry.get("checkpoint"),
        )


def _where(config_key: str | None, field: str) -> str:
    """Name the config key an error is about, so users know what to fix."""
    return f"segment.archs.{config_key}.{field}" if config_key else f"SegmenterSpec.{field}"


def _check_spec(spec: SegmenterSpec, config_key: str | None) -> None:
    """Raise ValueError naming the config key when the architecture or encoder is unknown."""
    if is_field_arch(spec.arch):
        problem = encoder_problem(spec.arch, spec.encoder)
        if problem:
            raise ValueError(f"{_where(config_key, 'encoder')}: {problem}")
        return
    if spec.arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        known = sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())
        raise ValueError(f"{_where(config_key, 'arch')}: unknown smp architecture {spec.arch!r}; known: {known}")
    if spec.encoder.startswith("tu-"):
        if not timm.is_model(spec.encoder[3:]):
            raise ValueError(f"{_where(config_key, 'encoder')}: {spec.encoder!r} is not a timm model name")
    elif spec.encoder not in smp.encoders.get_encoder_names():
        raise ValueError(
            f"{_where(config_key, 'encoder')}: unknown smp encoder {spec.encoder!r} "
            "(use an smp encoder name such as resnet18 / mit_b0, or tu-<timm name>)"
        )


def build_segmenter(spec: SegmenterSpec, config_key: str | None = None) -> nn.Module:
    """Create the model for ``spec`` with one output channel (logits of shape (B, 1, H, W) per map).

    smp models return one map; the field's multi-map segmenters a tuple (:func:`output_maps`, :func:`predict_logits`).
    Random initialisation follows torch's global RNG, so seed it first for reproducible weights.
    ``config_key`` (the ``segment.archs`` entry name) only improves error messages.
    """
    _check_spec(spec, config_key)
    if is_field_arch(spec.arch):
        try:
            model = build_field_arch(spec.arch, spec.encoder, spec.encoder_weights, spec.checkpoint)
        except ValueError as err:
            raise ValueError(f"{_where(config_key, 'arch')}: cannot build {spec.arch}/{spec.encoder}: {err}") from err
        if spec.checkpoint and not Path(spec.checkpoint).is_dir():  # a folder: HFSegformer's save_pretrained
            _load_checkpoint(model, Path(spec.checkpoint), _where(config_key, "checkpoint"))
        return model
    try:
        model = smp.create_model(
            spec.arch, encoder_name=spec.encoder, encoder_weights=spec.encoder_weights, in_channels=3, classes=1
        )
    except (KeyError, ValueError) as err:  # e.g. an encoder that does not support this architecture
        raise ValueError(f"{_where(config_key, 'arch')}: cannot build {spec.arch}/{spec.encoder}: {err}") from err
    if spec.checkpoint:
        _load_checkpoint(model, Path(spec.checkpoint), _where(config_key, "checkpoint"))
    return model


def summarize_segmenter(entry: Mapping[str, Any], config_key: str) -> dict[str, Any]:
    """``{"arch": config_key, "params": N, "maps": M}`` of one ``segment.archs`` entry, built with random weights
    (its ``encoder_weights`` and ``checkpoint`` are ignored: nothing is downloaded or read). ``params`` counts every
    parameter of the model as hardgen builds it (for PraNet without the backbone's unused ImageNet classifier),
    ``maps`` the maps its loss is summed over."""
    spec = SegmenterSpec.from_config(dict(entry), config_key)
    model = build_segmenter(SegmenterSpec(arch=spec.arch, encoder=spec.encoder), config_key)
    return {"arch": config_key, "params": int(sum(p.numel() for p in model.parameters())), "maps": map_count(model)}


def _load_checkpoint(model: nn.Module, path: Path, where: str) -> None:
    """Load a whole-model or encoder-only state dict into ``model``; raise naming the file on mismatch."""
    state = load_state_dict(path)
    model_keys = set(model.state_dict())
    if set(state) == model_keys or (set(state) <= model_keys and any(k.startswith("encoder.") for k in state)):
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{where}: {path} does not match the model: {err}") from err
        log.info("loaded whole-model weights from %s", path)
        return
    # Encoder-only weights, e.g. a timm/torchvision backbone export. smp's timm-universal encoders
    # nest the timm model one level down ("model."), so try that key prefix as well; timm's features_only
    # models (the field archs' encoders) flatten a nested first module ("stages.0." -> "stages_0.").
    encoder_keys = set(model.encoder.state_dict())
    renames = (lambda key: key, lambda key: "model." + key, lambda key: re.sub(r"^(\w+)\.(\d+)\.", r"\1_\2.", key))
    for rename in renames:
        remapped = {rename(key): value for key, value in state.items()}
        if encoder_keys <= set(remapped):
            dropped = sorted(set(remapped) - encoder_keys)
            if dropped:  # classifier heads and the like: present in backbone exports, absent in encoders
                log.info("%s: ignoring %d keys not in the encoder (e.g. %s)", path, len(dropped), dropped[:3])
            try:
                # Exactly the encoder's keys, so the default strict load applies; smp encoders override
                # load_state_dict with differing signatures, hence no keyword arguments.
                model.encoder.load_state_dict({key: remapped[key] for key in encoder_keys})
            except RuntimeError as err:
                raise ValueError(f"{where}: {path} does not match the encoder: {err}") from err
            log.info("loaded encoder weights from %s", path)
            return
    missing = sorted(encoder_keys - set(state))[:5]
    raise ValueError(f"{where}: {path} holds neither whole-model nor encoder weights (missing e.g. {missing})")


def load_segmenter(
    spec: SegmenterSpec, weights_path: str | Path, device: str | torch.device = "cpu", config_key: str | None = None
) -> nn.Module:
    """Build ``spec`` and load a trained ``model.safetensors`` (as written by :func:`train_segmenter`); eval mode.

    Predict with :func:`predict_logits` (the single map of a multi-map segmenter), never by calling the model.
    """
    # The trained weights replace everything, so skip the spec's own checkpoint / pretrained download.
    model = build_segmenter(
        SegmenterSpec(arch=spec.arch, encoder=spec.encoder, encoder_weights=None, checkpoint=None), config_key
    )
    state = load_state_dict(weights_path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_path}: weights do not match {spec.arch}/{spec.encoder}: {err}") from err
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------- loss
def structure_loss_per_sample(
    logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """PraNet's structure loss for each sample: boundary-weighted BCE + boundary-weighted soft IoU.

    ``logits`` and ``mask`` are (B, 1, H, W); ``mask`` holds values in [0, 1]. The weight map
    ``1 + 5 |avgpool31(mask) - mask|`` is large near object boundaries, where a local 31x31 mean
    differs from the pixel itself (zero padding, as PraNet's ``avg_pool2d`` default). Returns (B,).

    ``valid`` (same shape, 1 = use the pixel, 0 = ignore it; e.g. the FreeMask pixel filter of
    :mod:`hardgen.scoring.pixel_filter`) multiplies the weight map, so an ignored pixel counts in neither the
    weighted BCE nor the weighted IoU (the boundary weights still come from the whole mask). Without
    it the loss is computed exactly as before; an all-ones ``valid`` gives the same numbers bit for
    bit. A sample whose pixels are all ignored contributes 0.
    """
    if logits.shape != mask.shape or logits.dim() != 4:
        raise ValueError(f"structure loss needs logits and mask of equal (B, C, H, W) shape, got "
                         f"{tuple(logits.shape)} and {tuple(mask.shape)}")
    if valid is not None and valid.shape != mask.shape:
        raise ValueError(f"structure loss: valid-pixel mask {tuple(valid.shape)} differs from mask {tuple(mask.shape)}")
    mask = mask.to(logits.dtype)
    local_mean = F.avg_pool2d(mask, kernel_size=BOUNDARY_KERNEL, stride=1, padding=BOUNDARY_KERNEL // 2)
    weight = 1.0 + BOUNDARY_WEIGHT * (local_mean - mask).abs()
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    if valid is None:
        weighted_bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    else:
        weight = weight * valid.to(logits.dtype)
        # the unmasked weight sum is >= H*W, so the floor only acts on a fully ignored sample (0 / 0)
        weighted_bce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-12)
    prob = torch.sigmoid(logits)
    intersection = (prob * mask * weight).sum(dim=(2, 3))
    union = ((prob + mask) * weight).sum(dim=(2, 3))
    # +1 smoothing keeps empty masks finite and makes a perfect prediction score ~0
    weighted_iou = 1.0 - (intersection + 1.0) / (union - intersection + 1.0)
    return (weighted_bce + weighted_iou).mean(dim=1)


def structure_loss(logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of :func:`structure_loss_per_sample` (the training objective); ``valid`` as there."""
    return structure_loss_per_sample(logits, mask, valid).mean()


def _to_mask_size(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A map upsampled (bilinear) to the mask's size, as PraNet and Polyp-PVT supervise every map at full size."""
    if logits.shape[-2:] == mask.shape[-2:]:
        return logits
    return F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)


def maps_structure_loss(maps: Sequence[torch.Tensor], mask: torch.Tensor,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """The structure loss summed over a segmenter's maps (PraNet: its four; Polyp-PVT: P1 + P2), as released.

    Each map is first brought to the mask's size. One map (smp models): exactly :func:`structure_loss`.
    """
    if not maps:
        raise ValueError("maps_structure_loss: no maps")
    loss = structure_loss(_to_mask_size(maps[0], mask), mask, valid)
    for extra in maps[1:]:
        loss = loss + structure_loss(_to_mask_size(extra, mask), mask, valid)
    return loss


# ----------------------------------------------------------------------------------------------- data
def train_transform(size: int, augment: str = "hardgen") -> A.Compose:
    """Training augmentation (``segment.augment``).

    ``hardgen``: resize, flips, small shift-scale-rotate, colour jitter, ImageNet norm. ``pranet``: the released
    PraNet / Polyp-PVT recipes' augmentation only, i.e. resize and ImageNet norm (their multi-scale rescaling is the
    training loop's, :func:`scaled_size`; Polyp-PVT's flips and rotations are off in its released training).
    """
    if augment == "pranet":
        return eval_transform(size)
    if augment != "hardgen":
        raise ValueError(f"segment.augment: {augment!r} is not one of {list(AUGMENTATIONS)}")
    return A.Compose(
        [
            A.Resize(size, size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.0625, 0.0625), rotate=(-15, 15), p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ToTensorV2(),
        ]
    )


def eval_transform(size: int) -> A.Compose:
    """Test-time preprocessing: resize to size x size and ImageNet-normalise (no augmentation)."""
    return A.Compose([A.Resize(size, size), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2()])


def _check_pairs(pairs_df: pd.DataFrame, what: str) -> None:
    """Raise ValueError naming the missing column(s) or an empty table."""
    missing = [col for col in ("image", "mask") if col not in pairs_df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; got {list(pairs_df.columns)}")
    if len(pairs_df) == 0:
        raise ValueError(f"{what}: no (image, mask) pairs")


def _sample_ids(pairs_df: pd.DataFrame) -> list[str]:
    """The ``sample_id`` column, or image file stems when a table has none."""
    if "sample_id" in pairs_df.columns:
        return [str(s) for s in pairs_df["sample_id"]]
    return [Path(p).stem for p in pairs_df["image"]]


class PairDataset(Dataset):
    """(image, mask) path pairs as normalised tensors: image (3, S, S) float, mask (1, S, S) in {0, 1}.

    With ``augment=True`` items are addressed as ``(index, augmentation_seed)`` (see
    :class:`SeededEpochStream`): re-seeding the augmentation per item makes every sample's
    augmentation a function of the run seed alone, independent of worker count and scheduling.
    """

    def __init__(self, pairs_df: pd.DataFrame, size: int, augment: bool, augmentation: str = "hardgen") -> None:
        _check_pairs(pairs_df, "pairs table")
        self.images = [str(p) for p in pairs_df["image"]]
        self.masks = [str(p) for p in pairs_df["mask"]]
        self.sample_ids = _sample_ids(pairs_df)
        self.augment = augment
        self.transform = train_transform(size, augmentation) if augment else eval_transform(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        image, mask = read_pair(self.images[index], self.masks[index])
        if self.augment:
            self.transform.set_random_seed(aug_seed)
        out = self.transform(image=image, mask=mask.astype(np.uint8))
        return out["image"].float(), out["mask"].float().unsqueeze(0), self.sample_ids[index]


class FilteredPairDataset(PairDataset):
    """A :class:`PairDataset` whose items also carry an ignore map: ``(image, mask, ignore, sample_id)``.

    ``ignore`` holds one entry per row of ``pairs_df``: None (no pixel ignored, e.g. every real image)
    or a bool ``(size, size)`` map of the pixels to leave out of the loss, at the training size before
    augmentation (:func:`hardgen.scoring.pixel_filter.pixel_filter_masks` computes it on the resize of
    :func:`eval_transform`). Items return it as a (1, S, S) float tensor in {0, 1}. A row with a map is
    first resized to ``size`` (the transform's own first step, which is then the identity: same image
    and mask as without a map, bit for bit) and the map then goes through the very augmentation of
    the mask (albumentations' mask target: nearest resampling; pixels shifted in from outside the
    image are filled with 0, "not ignored", like the mask's background). A row without a map is the
    parent's item plus an all-zero map.
    """

    def __init__(self, pairs_df: pd.DataFrame, size: int, ignore: Sequence[np.ndarray | None],
                 augment: bool = True, augmentation: str = "hardgen") -> None:
        super().__init__(pairs_df, size, augment, augmentation)
        if len(ignore) != len(self.images):
            raise ValueError(f"ignore maps: {len(ignore)} entries for {len(self.images)} pairs")
        self.size = size
        self.resize = A.Resize(size, size)
        self.ignore: list[np.ndarray | None] = []  # bit-packed: 1/8 of the memory of bool maps
        for row, entry in enumerate(ignore):
            if entry is not None and np.shape(entry) != (size, size):
                raise ValueError(f"ignore map of pair {row} ({self.sample_ids[row]}): shape {np.shape(entry)}, "
                                 f"expected ({size}, {size}) (segment.size)")
            self.ignore.append(None if entry is None else np.packbits(np.asarray(entry, dtype=bool)))

    def ignore_map(self, index: int) -> np.ndarray | None:
        """The bool (size, size) ignore map of pair ``index`` before augmentation (None: nothing ignored)."""
        packed = self.ignore[index]
        if packed is None:
            return None
        return np.unpackbits(packed, count=self.size * self.size).reshape(self.size, self.size).astype(bool)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        ignore = self.ignore_map(index)
        if ignore is None:
            image, mask, sample_id = super().__getitem__(key)
            return image, mask, torch.zeros_like(mask), sample_id
        image, mask = read_pair(self.images[index], self.masks[index])
        resized = self.resize(image=image, mask=mask.astype(np.uint8))
        if self.augment:
            self.transform.set_random_seed(aug_seed)
        out = self.transform(image=resized["image"], mask=resized["mask"], masks=[ignore.astype(np.uint8)])
        return (out["image"].float(), out["mask"].float().unsqueeze(0), out["masks"][0].float().unsqueeze(0),
                self.sample_ids[index])


class SeededEpochStream(Sampler[tuple[int, int]]):
    """``total`` items from an endless stream of shuffled passes over ``n_items``, each with an augmentation seed.

    Pass after pass, the indices are permuted with ``generator`` and paired with augmentation seeds
    drawn from it; the stream stops after exactly ``total`` items (the last pass is cut short). So
    batching it into ``iterations`` batches of ``batch_size`` gives full batches that may straddle a
    pass boundary, and the stream is a function of the generator's seed alone.
    """

    def __init__(self, n_items: int, total: int, generator: torch.Generator) -> None:
        if n_items < 1 or total < 0:
            raise ValueError(f"SeededEpochStream: need n_items >= 1 and total >= 0, got {n_items}, {total}")
        self.n_items = n_items
        self.total = total
        self.generator = generator

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple[int, int]]:
        left = self.total
        while left > 0:
            order = torch.randperm(self.n_items, generator=self.generator).tolist()
            seeds = torch.randint(0, 2**31 - 1, (self.n_items,), generator=self.generator).tolist()
            take = min(left, self.n_items)
            yield from zip(order[:take], seeds[:take])
            left -= take


def scaled_size(size: int, scale: float) -> int:
    """PraNet's multi-scale side: ``round(size * scale / 32) * 32``, at least 32."""
    return max(SIZE_MULTIPLE, int(round(size * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def _check_size(size: int) -> None:
    if size <= 0 or size % SIZE_MULTIPLE:
        raise ValueError(f"segment.size: {size} must be a positive multiple of {SIZE_MULTIPLE} (smp encoders)")


# ------------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    """How one arch trains: ``segment.*`` with the arch entry's own recipe keys on top (:func:`resolve_recipe`).

    ``lr_decay``: ``(at, factor)``: the learning rate is multiplied by ``factor`` after ``round(at × iterations)``
    iterations (Polyp-PVT's released recipe: × 0.1 from half of the budget); None = constant.
    """

    optimizer: str
    learning_rate: float
    weight_decay: float
    lr_decay: tuple[float, float] | None
    batch_size: int
    iterations: int
    multi_scale: tuple[float, ...]
    grad_clip: float | None
    augment: str = "hardgen"

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
        }


def _lr_decay(value: Any, where: str) -> tuple[float, float] | None:
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


def resolve_recipe(segment: Mapping[str, Any], entry: Mapping[str, Any], config_key: str) -> Recipe:
    """The recipe of ``segment.archs.<config_key>``: each of :data:`ARCH_RECIPE_KEYS` the arch entry sets (not null)
    overrides the ``segment.*`` value of the same name for that arch; null (the schema's default) inherits it.

    ``segment`` is the config section with the schema's defaults filled in (:func:`hardgen.config.validation.apply_defaults`);
    a key missing from both raises ValueError naming it.
    """
    merged = {k: segment[k] for k in ARCH_RECIPE_KEYS if k in segment}
    where = {k: f"segment.{k}" for k in ARCH_RECIPE_KEYS}
    for key in ARCH_RECIPE_KEYS:
        if entry.get(key) is not None:
            merged[key] = entry[key]
            where[key] = f"segment.archs.{config_key}.{key}"
    missing = [f"segment.{k}" for k in ARCH_RECIPE_KEYS if k not in merged]
    if "augment" not in segment:
        missing.append("segment.augment")
    if missing:
        raise ValueError(f"segment.archs.{config_key}: no value for {missing} (set it in segment or the arch entry)")
    optimizer = str(merged["optimizer"]).lower()
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{where['optimizer']}: {merged['optimizer']!r} is not one of {list(OPTIMIZERS)}")
    augment = str(segment["augment"])
    if augment not in AUGMENTATIONS:
        raise ValueError(f"segment.augment: {augment!r} is not one of {list(AUGMENTATIONS)}")
    weight_decay = float(merged["weight_decay"])
    if weight_decay < 0:
        raise ValueError(f"{where['weight_decay']}: must be >= 0, got {weight_decay}")
    grad_clip = merged["grad_clip"]
    return Recipe(
        optimizer=optimizer,
        learning_rate=float(merged["learning_rate"]),
        weight_decay=weight_decay,
        lr_decay=_lr_decay(merged["lr_decay"], where["lr_decay"]),
        batch_size=int(merged["batch_size"]),
        iterations=int(merged["iterations"]),
        multi_scale=tuple(float(x) for x in merged["multi_scale"]),
        grad_clip=None if grad_clip is None else float(grad_clip),
        augment=augment,
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


# ------------------------------------------------------------------------------------------- training
def count_real_synthetic(pairs_df: pd.DataFrame) -> tuple[int, int]:
    """(real, synthetic) pair counts: synthetic rows have a ``variant`` other than ``real``.

    A table without a ``variant`` column is all real; in one with it, every row must name its variant
    (``real`` for real training images), so a missing label never passes as real.
    """
    if "variant" not in pairs_df.columns:
        return len(pairs_df), 0
    variants = pairs_df["variant"]
    if variants.isna().any():
        raise ValueError("pairs table: empty 'variant' cells (label real training images 'real')")
    synthetic = int((variants.astype(str) != "real").sum())
    return len(pairs_df) - synthetic, synthetic


def train_segmenter(
    pairs_df: pd.DataFrame,
    spec: SegmenterSpec,
    out_dir: str | Path,
    size: int,
    iterations: int,
    batch_size: int,
    lr: float,
    grad_clip: float | None,
    multi_scale: Sequence[float] = (1.0,),
    seed: int = 0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    config_key: str | None = None,
    ignore_masks: Sequence[np.ndarray | None] | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    lr_decay: tuple[float, float] | Mapping[str, float] | None = None,
    augment: str = "hardgen",
) -> dict[str, Any]:
    """Train a segmenter on ``pairs_df`` (columns image, mask [+ sample_id, variant]) the PraNet way.

    The recipe (:class:`Recipe`; :func:`resolve_recipe` reads it from the config): ``optimizer`` adam | adamw with
    ``weight_decay``, ``lr``, ``lr_decay`` ``(at, factor)`` (``lr × factor`` after ``round(at × iterations)``
    iterations), ``batch_size``, ``iterations``, ``multi_scale``, ``grad_clip`` and ``augment``
    (:func:`train_transform`). A multi-map segmenter's loss is the structure loss summed over its maps
    (:func:`maps_structure_loss`), each upsampled to the mask size.

    The budget is ``iterations`` batches of ``batch_size`` pairs, whatever the number of pairs: the
    batches are cut from an endless seeded stream of shuffled passes over the pairs
    (:class:`SeededEpochStream`), so every run of one seed sees ``iterations × batch_size`` images.
    As in PraNet, each batch takes one optimiser step per ``multi_scale`` entry (rescaled to
    :func:`scaled_size`), so the optimiser steps are ``iterations × len(multi_scale)``.

    Writes ``out_dir/model.safetensors`` (full state dict; metadata records iterations, images_seen,
    real and synthetic counts) and ``out_dir/train_log.csv`` (columns iteration, step, scale, loss;
    one row per optimiser step), both atomically and only after the last step. Real vs synthetic pairs
    are told apart by :func:`count_real_synthetic`. Returns ``{final_loss, last_step_loss, seconds,
    n_train, real_images, synthetic_images, iterations, batch_size, images_seen, steps, seed}`` where
    ``final_loss`` is the mean loss over the last ``min(iterations, ceil(n_train / batch_size))``
    iterations (about the last pass over the data). Deterministic for a given ``seed`` on a given
    device. A non-finite loss raises RuntimeError naming the step; nothing is saved then.
    ``grad_clip`` None or <= 0 disables clipping.

    ``ignore_masks`` (segment.pixel_filter; one entry per row of ``pairs_df``: None or a bool
    ``(size, size)`` map, see :class:`FilteredPairDataset`) leaves those pixels out of the structure
    loss; the maps follow each pair's augmentation and multi-scale resizing (nearest). Real rows must
    have None (real pixels are never filtered). The summary's ``ignored_pixel_fraction`` is the
    fraction of all synthetic pixels (at ``size``, before augmentation) that the maps ignore; None
    without maps.
    """
    _check_size(size)
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"segment.iterations: must be an integer >= 1, got {iterations!r}")
    if batch_size < 1:
        raise ValueError(f"segment.batch_size: must be >= 1, got {batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"segment.learning_rate: must be a positive number, got {lr}")
    if not multi_scale or any(not (s > 0) for s in multi_scale):
        raise ValueError(f"segment.multi_scale: need positive scales, got {list(multi_scale)}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"segment.augment: {augment!r} is not one of {list(AUGMENTATIONS)}")
    decay = _lr_decay(lr_decay, "segment.lr_decay")
    iterations = int(iterations)
    decay_after = None if decay is None else round(decay[0] * iterations)
    out_dir = Path(out_dir)
    device = torch.device(device)

    real_images, synthetic_images = count_real_synthetic(pairs_df)
    ignored_fraction = None
    if ignore_masks is None:
        dataset = PairDataset(pairs_df, size, augment=True, augmentation=augment)
    else:
        dataset = FilteredPairDataset(pairs_df, size, ignore_masks, augment=True, augmentation=augment)
        ignored_fraction = _ignored_fraction(pairs_df, ignore_masks, size, synthetic_images)
    torch.manual_seed(seed)  # model initialisation
    model = build_segmenter(spec, config_key).to(device).train()
    n_maps = map_count(model)
    optim = make_optimizer(model.parameters(), optimizer, lr, weight_decay, device)
    stream = SeededEpochStream(len(dataset), iterations * batch_size, torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=stream, num_workers=num_workers)
    train_sizes = [scaled_size(size, s) for s in multi_scale]
    log.info("training %s/%s (%d maps) on %d pairs (%d real, %d synthetic), sizes %s, %d iterations of %d "
             "(%.2f passes), %s lr %g wd %g decay %s, augment %s", spec.arch, spec.encoder, n_maps, len(dataset),
             real_images, synthetic_images, train_sizes, iterations, batch_size, iterations * batch_size / len(dataset),
             optimizer, lr, weight_decay, decay, augment)

    rows: list[dict[str, Any]] = []
    step = 0
    start = time.perf_counter()
    progress = tqdm(loader, total=iterations, desc="segmenter", unit="batch", leave=False)
    for iteration, batch in enumerate(progress, start=1):
        if decay_after is not None and iteration == decay_after + 1:
            for group in optim.param_groups:
                group["lr"] = lr * decay[1]
            log.info("iteration %d: learning rate x %g -> %g", iteration, decay[1], lr * decay[1])
        images, masks = batch[0].to(device), batch[1].to(device)
        valid = 1.0 - batch[2].to(device) if ignore_masks is not None else None
        for scale, train_size in zip(multi_scale, train_sizes):
            step += 1
            batch_valid = valid
            if train_size != size:  # PraNet rescales the batch (image and mask) bilinearly
                batch_images = F.interpolate(images, size=(train_size, train_size), mode="bilinear",
                                             align_corners=True)
                batch_masks = F.interpolate(masks, size=(train_size, train_size), mode="bilinear",
                                            align_corners=True)
                if valid is not None:  # the ignore map stays binary: nearest
                    batch_valid = F.interpolate(valid, size=(train_size, train_size), mode="nearest")
            else:
                batch_images, batch_masks = images, masks
            optim.zero_grad(set_to_none=True)
            loss = maps_structure_loss(output_maps(model, batch_images), batch_masks, batch_valid)
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"non-finite segmentation loss ({loss.item()}) at step {step} (iteration {iteration}, "
                    f"scale {scale}); nothing saved to {out_dir}"
                )
            loss.backward()
            if grad_clip is not None and grad_clip > 0:
                nn.utils.clip_grad_value_(model.parameters(), grad_clip)
            optim.step()
            rows.append({"iteration": iteration, "step": step, "scale": float(scale), "loss": float(loss.item())})
            progress.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start
    if step != iterations * len(multi_scale):  # the stream is exactly iterations full batches
        raise RuntimeError(f"segmenter training ran {step} steps, expected {iterations * len(multi_scale)}")

    train_log = pd.DataFrame(rows, columns=["iteration", "step", "scale", "loss"])
    images_seen = iterations * batch_size
    metadata = {"arch": spec.arch, "encoder": spec.encoder, "size": str(size), "iterations": str(iterations),
                "batch_size": str(batch_size), "images_seen": str(images_seen), "real_images": str(real_images),
                "synthetic_images": str(synthetic_images), "seed": str(seed)}
    if ignored_fraction is not None:
        metadata["ignored_pixel_fraction"] = str(ignored_fraction)
    save_state_dict(out_dir / "model.safetensors", model.state_dict(), metadata=metadata)
    write_csv(out_dir / "train_log.csv", train_log)
    last = min(iterations, math.ceil(len(dataset) / batch_size))
    summary = {
        "final_loss": float(train_log.loc[train_log["iteration"] > iterations - last, "loss"].mean()),
        "last_step_loss": float(train_log["loss"].iloc[-1]),
        "seconds": seconds,
        "n_train": len(dataset),
        "real_images": real_images,
        "synthetic_images": synthetic_images,
        "iterations": iterations,
        "batch_size": batch_size,
        "images_seen": images_seen,
        "steps": step,
        "seed": int(seed),
        "ignored_pixel_fraction": ignored_fraction,
        "maps": n_maps,
        **Recipe(optimizer=optimizer, learning_rate=lr, weight_decay=weight_decay, lr_decay=decay,
                 batch_size=batch_size, iterations=iterations, multi_scale=tuple(multi_scale),
                 grad_clip=grad_clip if grad_clip is not None and grad_clip > 0 else None, augment=augment).record(),
    }
    log.info("segmenter trained: %s", summary)
    return summary


def _ignored_fraction(pairs_df: pd.DataFrame, ignore_masks: Sequence[np.ndarray | None], size: int,
                      synthetic_images: int) -> float | None:
    """Fraction of all synthetic pixels that ``ignore_masks`` ignore; refuses a map on a real row."""
    if len(ignore_masks) != len(pairs_df):
        raise ValueError(f"ignore maps: {len(ignore_masks)} entries for {len(pairs_df)} pairs")
    variants = pairs_df["variant"].astype(str).tolist() if "variant" in pairs_df.columns else ["real"] * len(pairs_df)
    ignored = 0
    for row, (variant, entry) in enumerate(zip(variants, ignore_masks)):
        if entry is None:
            continue
        if variant == "real":
            raise ValueError(f"ignore maps: pair {row} is a real image; real pixels are never filtered")
        ignored += int(np.count_nonzero(entry))
    if synthetic_images == 0:
        return None
    return ignored / (synthetic_images * size * size)


def run_record(arch: str, policy: str, seed: int, summary: Mapping[str, Any], ratio: float | None = None
               ) -> dict[str, Any]:
    """The per-run record of one benchmark (or judge) run: :data:`RUN_FIELDS` from ``summary``.

    ``ratio`` is the run's synthetic ratio (``segment.synthetic_ratios``, the path's ``ratio-<r>``); the
    real policy (and the judge) is ratio 0 and may leave it out; a synthetic run without one records null
    (the report refuses such a record).

    ``seed`` is the configured seed (the path's ``seed-<s>``); ``training_seed`` (the seed the run
    actually used, ``summary['seed']``) is kept beside it, so a judge's offset seed stays visible, and
    so is ``ignored_pixel_fraction`` (segment.pixel_filter; null when no pixel filter ran).
    """
    counts = ("real_images", "synthetic_images", "iterations", "images_seen", "batch_size")
    missing = [k for k in (*counts, "seed") if k not in summary]
    if missing:
        raise ValueError(f"run record {arch}/{policy}/seed-{seed}: training summary lacks {missing}")
    if ratio is None and policy == "real":
        ratio = 0.0
    if ratio is not None and (not float(ratio) >= 0 or (policy == "real") != (float(ratio) == 0)):
        raise ValueError(f"run record {arch}/{policy}/seed-{seed}: ratio {ratio!r} (the real policy alone is ratio 0)")
    record: dict[str, Any] = {"arch": str(arch), "policy": str(policy),
                              "ratio": None if ratio is None else float(ratio), "seed": int(seed)}
    record.update({k: int(summary[k]) for k in counts})
    record["training_seed"] = int(summary["seed"])
    # segment.pixel_filter: the fraction of synthetic pixels left out of the loss (null: no filter / no synthetic)
    fraction = summary.get("ignored_pixel_fraction")
    record["ignored_pixel_fraction"] = None if fraction is None else float(fraction)
    # the training recipe the run used (per arch: segment.* with the arch's own keys on top)
    record.update({k: summary[k] for k in RECIPE_FIELDS if k in summary})
    return record


def write_run_record(path: str | Path, arch: str, policy: str, seed: int, summary: Mapping[str, Any],
                     ratio: float | None = None) -> dict[str, Any]:
    """Write :func:`run_record` as JSON to ``path`` (``results/segment/<arch>/<policy>/ratio-<r>/seed-<s>/run.json``)."""
    record = run_record(arch, policy, seed, summary, ratio)
    write_json(path, record)
    return record


# ------------------------------------------------------------------------------------------ inference
@torch.no_grad()
def sample_losses(
    model: nn.Module,
    pairs_df: pd.DataFrame,
    size: int,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Per-sample structure loss and Dice of a trained segmenter on (image, mask) pairs, e.g. generated samples.

    Images and masks are resized to ``size`` without augmentation; the model is put in eval mode. Returns
    a DataFrame with columns ``sample_id`` (the column if present, else the image file stem), ``loss``
    and ``dice`` (the prediction thresholded at sigmoid 0.5 against the mask, both at ``size``; an empty
    prediction on an empty mask is 1: :func:`hardgen.evaluation.metrics.prediction_dice`), in input order. Higher
    loss = harder sample for this segmenter; low Dice on a generated sample = the segmenter does not find
    the polyp its conditioning mask promises (the fidelity guard).
    """
    from hardgen.evaluation.metrics import prediction_dice

    _check_size(size)
    dataset = PairDataset(pairs_df, size, augment=False)
    model = model.to(device).eval()
    ids: list[str] = []
    losses: list[float] = []
    dices: list[float] = []
    for images, masks, batch_ids in tqdm(DataLoader(dataset, batch_size=batch_size), desc="sample losses",
                                         unit="batch", leave=False):
        logits = predict_logits(model, images.to(device))
        losses.extend(structure_loss_per_sample(logits, masks.to(device)).cpu().tolist())
        dices.extend(prediction_dice(logits, masks).tolist())
        ids.extend(batch_ids)
    return pd.DataFrame({"sample_id": ids, "loss": losses, "dice": dices})


def foreground_fractions(pairs_df: pd.DataFrame) -> pd.DataFrame:
    """Per sample, the fraction of its mask's pixels above 127 (the file as stored, not resized).

    Columns ``sample_id`` (as :func:`sample_losses`) and ``fg_fraction``, in input order; the
    covariate the hardness-transfer table partials out (bigger polyps are easier to segment).
    """
    _check_pairs(pairs_df, "pairs table")
    fractions = [float(read_mask(path).mean()) for path in pairs_df["mask"]]
    return pd.DataFrame({"sample_id": _sample_ids(pairs_df), "fg_fraction": fractions})
