"""PraNet's structure loss (boundary-weighted BCE + boundary-weighted soft IoU), per sample and summed over maps.

PraNet and Polyp-PVT return several deeply supervised maps: their loss is the structure loss summed over them, each
upsampled to the mask's size, as their authors train (:func:`maps_structure_loss`); smp models return one map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: PraNet's structure loss: kernel of the local average that finds pixels near the mask boundary.
BOUNDARY_KERNEL = 31
#: ... and how much more those boundary pixels weigh than the rest.
BOUNDARY_WEIGHT = 5.0



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

