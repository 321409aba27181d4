"""Segmentation pairs as tensors: the training and test transforms, the (image, mask) datasets and the seeded stream.

A pairs table has columns ``image`` and ``mask`` (paths) and optionally ``sample_id`` and ``variant`` (``real`` for
real training images). :class:`SegmentationPairs` reads it at one size (augmented for training, resized only for
evaluation; binary masks, or with ``segment.resize: released`` the released loaders' soft PIL-bilinear ones), :class:`FilteredSegmentationPairs` adds each pair's ignore map (segment.pixel_filter), and
:class:`SeededEpochStream` addresses items as ``(index, augmentation_seed)`` so a run's batches and augmentations
are a function of its seed alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch.utils.data import Dataset, Sampler

from hardgen.core.io import DataError, read_gray, read_pair, read_rgb

#: ImageNet statistics: every smp/timm encoder expects inputs normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: smp encoders downsample by 32, so every input side must be a multiple of it.
SIZE_MULTIPLE = 32

#: ``segment.augment``: the training augmentation (pranet: the released recipes' resize only, the multi-scale
#: rescaling being the training loop's; hardgen: flips, a small affine and colour jitter on top).
AUGMENTATIONS = ("pranet", "hardgen")

#: ``segment.resize``: how training pairs reach the training size (hardgen: the mask binarised at 127 then resized
#: nearest, the image with cv2 linear; released: the released PraNet / Polyp-PVT loaders' PIL bilinear on both, the
#: grey mask unbinarised and kept soft in [0, 1]).
RESIZES = ("hardgen", "released")


def released_pair(image_path: str | Path, mask_path: str | Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask as the released PraNet / Polyp-PVT loaders make them (utils/dataloader.py PolypDataset:
    ``transforms.Resize((size, size))`` on the PIL RGB image and the PIL ``L`` mask, then ``ToTensor``): both resized
    with PIL bilinear (antialiased when shrinking); the image uint8 ``(size, size, 3)``, the mask float32
    ``(size, size)`` = grey level / 255, soft at the boundary (never binarised). A size mismatch raises
    :class:`DataError` naming both files."""
    image, gray = read_rgb(image_path), read_gray(mask_path)
    if image.shape[:2] != gray.shape:
        raise DataError(f"{mask_path}: mask size {gray.shape} differs from image {image_path} size {image.shape[:2]}")
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return image, gray.astype(np.float32) / 255.0


def train_transform(size: int, augment: str = "hardgen") -> A.Compose:
    """Training augmentation (``segment.augment``).

    ``hardgen``: resize, flips, small shift-scale-rotate, colour jitter, ImageNet norm. ``pranet``: the released
    PraNet / Polyp-PVT recipes' augmentation only, i.e. resize and ImageNet norm (their multi-scale rescaling is the
    training loop's, :func:`hardgen.segmentation.recipes.scaled_size`; Polyp-PVT's flips and rotations are off in
    its released training).
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


def check_pairs(pairs_df: pd.DataFrame, what: str) -> None:
    """Raise ValueError naming ``what`` and the missing column(s) (image, mask), or an empty table."""
    missing = [col for col in ("image", "mask") if col not in pairs_df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; got {list(pairs_df.columns)}")
    if len(pairs_df) == 0:
        raise ValueError(f"{what}: no (image, mask) pairs")


def sample_ids(pairs_df: pd.DataFrame) -> list[str]:
    """The ``sample_id`` column, or image file stems when a table has none."""
    if "sample_id" in pairs_df.columns:
        return [str(s) for s in pairs_df["sample_id"]]
    return [Path(p).stem for p in pairs_df["image"]]


class SegmentationPairs(Dataset):
    """(image, mask) path pairs as normalised tensors: image (3, S, S) float, mask (1, S, S) in {0, 1}.

    ``resize`` (``segment.resize``, :data:`RESIZES`): hardgen reads the mask binarised and lets the transform resize
    the pair (cv2 linear image, nearest mask); released first resizes both with PIL bilinear to ``size``
    (:func:`released_pair`; the transform's own resize is then the identity) and the mask stays soft, in [0, 1].
    With ``augment=True`` items are addressed as ``(index, augmentation_seed)`` (see
    :class:`SeededEpochStream`): re-seeding the augmentation per item makes every sample's
    augmentation a function of the run seed alone, independent of worker count and scheduling.
    """

    def __init__(self, pairs_df: pd.DataFrame, size: int, augment: bool, augmentation: str = "hardgen",
                 resize: str = "hardgen") -> None:
        check_pairs(pairs_df, "pairs table")
        if resize not in RESIZES:
            raise ValueError(f"segment.resize: {resize!r} is not one of {list(RESIZES)}")
        self.images = [str(p) for p in pairs_df["image"]]
        self.masks = [str(p) for p in pairs_df["mask"]]
        self.sample_ids = sample_ids(pairs_df)
        self.augment = augment
        self.size = size
        self.resize_kind = resize
        self.transform = train_transform(size, augmentation) if augment else eval_transform(size)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` as the transform takes it: hardgen: the image and its {0, 1} uint8 mask as read; released:
        both at ``size`` by PIL bilinear, the mask float32 in [0, 1] (:func:`released_pair`)."""
        if self.resize_kind == "released":
            return released_pair(self.images[index], self.masks[index], self.size)
        image, mask = read_pair(self.images[index], self.masks[index])
        return image, mask.astype(np.uint8)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.read(index)
        if self.augment:
            self.transform.set_random_seed(aug_seed)
        out = self.transform(image=image, mask=mask)
        return out["image"].float(), out["mask"].float().unsqueeze(0), self.sample_ids[index]


class FilteredSegmentationPairs(SegmentationPairs):
    """A :class:`SegmentationPairs` whose items also carry an ignore map: ``(image, mask, ignore, sample_id)``.

    ``ignore`` holds one entry per row of ``pairs_df``: None (no pixel ignored, e.g. every real image)
    or a bool ``(size, size)`` map of the pixels to leave out of the loss, at the training size before
    augmentation (:func:`hardgen.scoring.pixel_filter.pixel_filter_masks` computes it on the resize of
    :func:`eval_transform`). Items return it as a (1, S, S) float tensor in {0, 1}. A row with a map is
    first resized to ``size`` (the transform's own first step, which is then the identity: same image
    and mask as without a map, bit for bit; with ``resize`` released the pair already is at ``size``) and the map then goes through the very augmentation of
    the mask (albumentations' mask target: nearest resampling; pixels shifted in from outside the
    image are filled with 0, "not ignored", like the mask's background). A row without a map is the
    parent's item plus an all-zero map.
    """

    def __init__(self, pairs_df: pd.DataFrame, size: int, ignore: Sequence[np.ndarray | None],
                 augment: bool = True, augmentation: str = "hardgen", resize: str = "hardgen") -> None:
        super().__init__(pairs_df, size, augment, augmentation, resize)
        if len(ignore) != len(self.images):
            raise ValueError(f"ignore maps: {len(ignore)} entries for {len(self.images)} pairs")
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
        image, mask = self.read(index)
        resized = self.resize(image=image, mask=mask)
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


def check_size(size: int) -> None:
    """Raise ValueError naming ``segment.size`` unless ``size`` is a positive multiple of :data:`SIZE_MULTIPLE`."""
    if size <= 0 or size % SIZE_MULTIPLE:
        raise ValueError(f"segment.size: {size} must be a positive multiple of {SIZE_MULTIPLE} (smp encoders)")


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

