"""FreeMask's pixel filter: leave out of the segmenter's loss the synthetic pixels a real-trained model finds too hard.

FreeMask (Yang et al., "FreeMask: Synthetic Images with Dense Annotations Make Stronger Segmentation Models",
NeurIPS 2023; ``preprocess/filter.py`` of github.com/LiheYoung/FreeMask) defines it as follows: a segmenter trained
on the real training set computes the per-pixel cross-entropy on every *real training* image, and the class-wise
mean loss is the sum over all real pixels of a class divided by their number (pooled over the whole real set, not
per image); a synthetic pixel of class c whose loss under the same model exceeds ``tolerance_margin`` × that
class-wise mean is set to the ignore label (their default margin: 1.25). The class means therefore come from the
real images, and every synthetic pixel is held to the bound of the class its mask gives it.

hardgen does exactly that for binary polyp masks (classes: background = mask 0, polyp = mask 1), with the BCE part of
PraNet's structure loss as the per-pixel loss, the real-only feedback judge of the same architecture
(``results/judge/<arch>/seed-<feedback.judge_seed>``) as the real-trained model, images and masks at
``segment.size`` (the resize of :func:`hardgen.segmentation.datasets.eval_transform`, which is also the first step of
training) and ``segment.pixel_filter`` as the margin. Ignored pixels get weight 0 in the structure loss
(:func:`hardgen.segmentation.losses.structure_loss` with ``valid``); their maps follow each pair's augmentation
(:class:`hardgen.segmentation.datasets.FilteredSegmentationPairs`). Real pixels are never filtered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hardgen.core.io import DataError
from hardgen.models.archs import predict_logits
from hardgen.segmentation.datasets import (
    SegmentationPairs,
    check_size,
    count_real_synthetic,
)

log = logging.getLogger(__name__)

#: The two classes of a binary polyp mask, indexed by the mask value.
CLASSES: tuple[str, str] = ("background", "polyp")


def pixel_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy of ``logits`` against ``mask`` (both (B, 1, H, W)) -> (B, H, W).

    The unweighted BCE term of the structure loss, pixel by pixel (no boundary weight, no reduction).
    """
    if logits.shape != mask.shape or logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"pixel_bce: need logits and mask of equal (B, 1, H, W) shape, got {tuple(logits.shape)} "
                         f"and {tuple(mask.shape)}")
    return F.binary_cross_entropy_with_logits(logits, mask.to(logits.dtype), reduction="none")[:, 0]


def class_mean_losses(loss_maps: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """FreeMask's class-wise mean loss: ``(background, polyp)`` mean per-pixel loss over every pixel of the class.

    ``loss_maps`` yields ``(loss, mask)`` pairs of equal (H, W) shape (mask bool, or 0/1). Pixels are pooled over
    all maps (a big image weighs more than a small one, as in FreeMask). Raises :class:`DataError` when a class
    has no pixel at all (its mean, and so its bound, would be undefined).
    """
    sums = np.zeros(2, dtype=np.float64)
    counts = np.zeros(2, dtype=np.int64)
    for loss, mask in loss_maps:
        loss, mask = np.asarray(loss, dtype=np.float64), np.asarray(mask).astype(bool)
        if loss.shape != mask.shape:
            raise ValueError(f"class_mean_losses: loss map {loss.shape} and mask {mask.shape} differ")
        sums += (loss[~mask].sum(), loss[mask].sum())
        counts += (int((~mask).sum()), int(mask.sum()))
    empty = [CLASSES[c] for c in range(2) if counts[c] == 0]
    if empty:
        raise DataError(f"pixel filter: the real images have no {' and no '.join(empty)} pixels, so the class-wise "
                        "mean loss (and the bound of segment.pixel_filter) is undefined")
    return float(sums[0] / counts[0]), float(sums[1] / counts[1])


def ignore_mask(loss: np.ndarray, mask: np.ndarray, class_means: Sequence[float], factor: float) -> np.ndarray:
    """The pixels to ignore: ``loss > factor × class_means[class]``, each pixel's class given by ``mask``.

    ``loss`` and ``mask`` are (H, W) (mask bool or 0/1); ``class_means`` is ``(background, polyp)``
    (:func:`class_mean_losses`). Returns a bool (H, W) map, True exactly where the loss is strictly above the
    pixel's bound (a pixel at the bound is kept).
    """
    if not (isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0 and np.isfinite(factor)):
        raise ValueError(f"segment.pixel_filter: must be a positive number, got {factor!r}")
    loss, mask = np.asarray(loss), np.asarray(mask).astype(bool)
    if loss.shape != mask.shape or loss.ndim != 2:
        raise ValueError(f"ignore_mask: need (H, W) loss and mask of equal shape, got {loss.shape} and {mask.shape}")
    if len(class_means) != 2:
        raise ValueError(f"ignore_mask: need (background, polyp) class means, got {list(class_means)}")
    bound = np.where(mask, factor * float(class_means[1]), factor * float(class_means[0]))
    return loss > bound


@torch.inference_mode()
def filter_judge_pixel_losses(
    model: nn.Module, pairs_df: pd.DataFrame, size: int, batch_size: int = 8, device: str | torch.device = "cpu"
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(row, loss, mask)`` for every pair: the model's per-pixel BCE (float32 (size, size)) and the bool mask.

    Images and masks are resized to ``size`` as :func:`hardgen.segmentation.datasets.eval_transform` does (the mask
    with nearest: the very mask training sees before augmentation); the model runs in eval mode. ``row`` is the
    position in ``pairs_df``.
    """
    check_size(size)
    model = model.to(device).eval()
    dataset = SegmentationPairs(pairs_df, size, augment=False)
    row = 0
    for images, masks, _ in DataLoader(dataset, batch_size=batch_size):
        losses = pixel_bce(predict_logits(model, images.to(device)).float(), masks.to(device)).cpu().numpy()
        for loss, mask in zip(losses, masks[:, 0].numpy() > 0.5):
            yield row, loss.astype(np.float32), mask
            row += 1


@dataclass(frozen=True)
class PixelFilter:
    """What :func:`pixel_filter_masks` found.

    ``ignore``: one entry per row of the pairs table, None for real rows, else the bool (size, size) map of
    ignored pixels. ``class_means``: (background, polyp) mean loss of the judge on the real rows.
    ``ignored_fraction``: ignored synthetic pixels / all synthetic pixels (None without synthetic rows);
    ``ignored_by_class``: the same per class (background, polyp; None for a class without synthetic pixels).
    """

    ignore: list[np.ndarray | None]
    class_means: tuple[float, float]
    factor: float
    ignored_fraction: float | None
    ignored_by_class: tuple[float | None, float | None]


def pixel_filter_masks(
    model: nn.Module,
    pairs_df: pd.DataFrame,
    size: int,
    factor: float,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    class_means_cache: dict[tuple, tuple[float, float]] | None = None,
) -> PixelFilter:
    """FreeMask's filter for one training table: class means on its real rows, ignore maps for its synthetic rows.

    ``pairs_df`` is the segmenter's training table (columns image, mask, variant [+ sample_id]; ``variant`` real
    marks the real images, see :func:`hardgen.segmentation.datasets.count_real_synthetic`); ``model`` the real-trained
    judge.
    The class-wise means come from the real rows (the judge's own training images, as in FreeMask), the bound of
    each synthetic pixel is ``factor`` × the mean of its class (:func:`ignore_mask`).

    ``class_means_cache``: a dict the caller keeps for one judge (``model``) across the training tables of one
    job; the class means of a set of real rows are computed once and reused (the same floats: every run of a job
    shares the real training images).
    """
    real_images, synthetic_images = count_real_synthetic(pairs_df)
    is_real = (pairs_df["variant"].astype(str) == "real").to_numpy() if "variant" in pairs_df.columns else \
        np.ones(len(pairs_df), dtype=bool)
    if real_images == 0:
        raise DataError("pixel filter: the training table has no real images to take the class-wise mean loss from")
    real_rows = pairs_df[is_real].reset_index(drop=True)
    key = (size, batch_size, str(device), *zip(real_rows["image"].astype(str), real_rows["mask"].astype(str)))
    class_means = None if class_means_cache is None else class_means_cache.get(key)
    if class_means is None:
        class_means = class_mean_losses((loss, mask) for _, loss, mask in
                                        filter_judge_pixel_losses(model, real_rows, size, batch_size, device))
        if class_means_cache is not None:
            class_means_cache[key] = class_means
    ignore: list[np.ndarray | None] = [None] * len(pairs_df)
    positions = np.flatnonzero(~is_real)
    ignored = np.zeros(2, dtype=np.int64)
    pixels = np.zeros(2, dtype=np.int64)
    if synthetic_images:
        synthetic_rows = pairs_df.iloc[positions].reset_index(drop=True)
        for row, loss, mask in filter_judge_pixel_losses(model, synthetic_rows, size, batch_size, device):
            ignored_here = ignore_mask(loss, mask, class_means, factor)
            ignore[positions[row]] = ignored_here
            ignored += (int((ignored_here & ~mask).sum()), int((ignored_here & mask).sum()))
            pixels += (int((~mask).sum()), int(mask.sum()))
    fraction = float(ignored.sum() / pixels.sum()) if pixels.sum() else None
    by_class = tuple(float(ignored[c] / pixels[c]) if pixels[c] else None for c in range(2))
    log.info("pixel filter ×%g: class-wise mean loss on %d real images: background %.4g, polyp %.4g; ignored %s of "
             "%d synthetic images' pixels (background %s, polyp %s)", factor, real_images, *class_means,
             "n/a" if fraction is None else f"{fraction:.2%}", synthetic_images,
             *("n/a" if f is None else f"{f:.2%}" for f in by_class))
    return PixelFilter(ignore=ignore, class_means=class_means, factor=float(factor), ignored_fraction=fraction,
                       ignored_by_class=by_class)
