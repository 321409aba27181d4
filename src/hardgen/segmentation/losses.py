"""PraNet's structure loss (boundary-weighted BCE + boundary-weighted soft IoU), per sample and summed over maps.

PraNet and Polyp-PVT return several deeply supervised maps: their loss is the structure loss summed over them, each
upsampled to the mask's size, as their authors train (:func:`maps_structure_loss`); smp models return one map.

Two kinds (:data:`STRUCTURE_LOSSES`, ``segment.loss``): ``structure``, hardgen's, the boundary-weighted BCE the papers
describe; ``structure_released``, the loss PraNet's and Polyp-PVT's released code computes. There
``F.binary_cross_entropy_with_logits(pred, mask, reduce='none')`` passes the legacy ``reduce`` argument, and a
non-empty string counts as true: the BCE is the plain batch mean (a scalar), and the weighting line after it,
``(weit * wbce).sum((2, 3)) / weit.sum((2, 3))``, returns that scalar unchanged. So the published models trained
with the unweighted BCE + the boundary-weighted IoU. Only segmenter training reads ``segment.loss``; the measures of
hardness (rules segmenter_loss / judge_loss, :func:`hardgen.segmentation.measures.sample_losses`) and the feedback
judge's ``feedback.seg_loss: structure`` keep hardgen's ``structure``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: PraNet's structure loss: kernel of the local average that finds pixels near the mask boundary.
BOUNDARY_KERNEL = 31
#: ... and how much more those boundary pixels weigh than the rest.
BOUNDARY_WEIGHT = 5.0
#: ``segment.loss``: the BCE term boundary-weighted (``structure``, the papers' and hardgen's) or the plain mean BCE
#: of PraNet's and Polyp-PVT's released code (``structure_released``); both add the boundary-weighted soft IoU.
STRUCTURE_LOSSES = ("structure", "structure_released")


def structure_loss_per_sample(
    logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None, kind: str = "structure"
) -> torch.Tensor:
    """PraNet's structure loss for each sample: boundary-weighted BCE + boundary-weighted soft IoU.

    ``logits`` and ``mask`` are (B, 1, H, W); ``mask`` holds values in [0, 1]. The weight map
    ``1 + 5 |avgpool31(mask) - mask|`` is large near object boundaries, where a local 31x31 mean
    differs from the pixel itself (zero padding, as PraNet's ``avg_pool2d`` default). Returns (B,).

    ``kind`` (:data:`STRUCTURE_LOSSES`): ``structure`` weighs the BCE with the weight map; ``structure_released``
    takes the plain mean BCE of each sample, as the released code does (module docstring). The released BCE is one
    mean over the whole batch; the mean over the batch of each sample's mean is the same number whenever the samples
    have equal size (always, within one batch), so this per-sample form is exact: :func:`structure_loss` equals the
    released ``structure_loss`` (up to float summation order).

    ``valid`` (same shape, 1 = use the pixel, 0 = ignore it; e.g. the FreeMask pixel filter of
    :mod:`hardgen.scoring.pixel_filter`) multiplies the weight map, so an ignored pixel counts in neither the
    weighted BCE nor the weighted IoU (the boundary weights still come from the whole mask); ``structure_released``
    takes its BCE as the mean over each sample's valid pixels (the released code has no ignored pixels; per sample,
    so with ``valid`` it is no longer the pooled batch mean). Without it the loss is computed exactly as before; an
    all-ones ``valid`` gives the same numbers (``structure``: bit for bit). A sample whose pixels are all ignored
    contributes 0.
    """
    if kind not in STRUCTURE_LOSSES:
        raise ValueError(f"segment.loss: {kind!r} is not one of {list(STRUCTURE_LOSSES)}")
    if logits.shape != mask.shape or logits.dim() != 4:
        raise ValueError(f"structure loss needs logits and mask of equal (B, C, H, W) shape, got "
                         f"{tuple(logits.shape)} and {tuple(mask.shape)}")
    if valid is not None and valid.shape != mask.shape:
        raise ValueError(f"structure loss: valid-pixel mask {tuple(valid.shape)} differs from mask {tuple(mask.shape)}")
    mask = mask.to(logits.dtype)
    local_mean = F.avg_pool2d(mask, kernel_size=BOUNDARY_KERNEL, stride=1, padding=BOUNDARY_KERNEL // 2)
    weight = 1.0 + BOUNDARY_WEIGHT * (local_mean - mask).abs()
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    if valid is not None:
        valid = valid.to(logits.dtype)
        weight = weight * valid
    if kind == "structure_released":
        # the plain mean BCE (over the valid pixels; a fully ignored sample's sum 0 over the floor 1 is 0)
        bce_term = bce.mean(dim=(2, 3)) if valid is None else (
            (valid * bce).sum(dim=(2, 3)) / valid.sum(dim=(2, 3)).clamp_min(1.0))
    elif valid is None:
        bce_term = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    else:
        # the unmasked weight sum is >= H*W, so the floor only acts on a fully ignored sample (0 / 0)
        bce_term = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-12)
    prob = torch.sigmoid(logits)
    intersection = (prob * mask * weight).sum(dim=(2, 3))
    union = ((prob + mask) * weight).sum(dim=(2, 3))
    # +1 smoothing keeps empty masks finite and makes a perfect prediction score ~0
    weighted_iou = 1.0 - (intersection + 1.0) / (union - intersection + 1.0)
    return (bce_term + weighted_iou).mean(dim=1)


def structure_loss(logits: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None,
                   kind: str = "structure") -> torch.Tensor:
    """Batch mean of :func:`structure_loss_per_sample` (the training objective); ``valid`` and ``kind`` as there."""
    return structure_loss_per_sample(logits, mask, valid, kind).mean()


def _to_mask_size(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A map upsampled (bilinear) to the mask's size, as PraNet and Polyp-PVT supervise every map at full size."""
    if logits.shape[-2:] == mask.shape[-2:]:
        return logits
    return F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)


def maps_structure_loss(maps: Sequence[torch.Tensor], mask: torch.Tensor,
                        valid: torch.Tensor | None = None, kind: str = "structure") -> torch.Tensor:
    """The structure loss of ``kind`` (``segment.loss``) summed over a segmenter's maps (PraNet: its four;
    Polyp-PVT: P1 + P2), as released.

    Each map is first brought to the mask's size. One map (smp models): exactly :func:`structure_loss`.
    """
    if not maps:
        raise ValueError("maps_structure_loss: no maps")
    loss = structure_loss(_to_mask_size(maps[0], mask), mask, valid, kind)
    for extra in maps[1:]:
        loss = loss + structure_loss(_to_mask_size(extra, mask), mask, valid, kind)
    return loss
