"""Parts shared by the field's segmenters: the conv + BN unit, the timm backbone, the multi-map contract.

A field segmenter (:class:`MultiMapSegmenter`) returns a tuple of logit maps, each (B, 1, H, W) at the input's
size, in the order its authors return them; :meth:`MultiMapSegmenter.prediction` turns them into the one map
that is thresholded, scored and saved (PraNet: the last one; Polyp-PVT: the sum of both). The training loss is
the structure loss summed over all maps, as both authors train.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm, no activation: the authors' ``BasicConv2d`` computes exactly this
    (its ReLU is built but never called, and has no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 padding: int | tuple[int, int] = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def timm_backbone(name: str, pretrained: bool, **kwargs: object) -> nn.Module:
    """A timm model as a feature pyramid (``features_only``): no classifier, random unless ``pretrained``.

    ``pretrained`` loads timm's weights for ``name`` (a download unless they are cached); a local checkpoint
    is loaded by the caller instead (:func:`hardgen.segmentation.build.build_segmenter`).
    """
    if not timm.is_model(name):
        raise ValueError(f"{name!r} is not a timm model name")
    return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)


def pick_levels(backbone: nn.Module, reductions: Sequence[int]) -> list[int]:
    """Indices of the backbone's feature levels at the given strides (e.g. 8, 16, 32), in that order."""
    have = list(backbone.feature_info.reduction())
    missing = [r for r in reductions if r not in have]
    if missing:
        raise ValueError(f"backbone has no feature level at stride(s) {missing} (it has {have})")
    return [have.index(r) for r in reductions]


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (align_corners False, as the authors' ``F.interpolate`` default) to ``size``; a no-op
    at that size already."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class MultiMapSegmenter(nn.Module, metaclass=ABCMeta):
    """A segmenter with deep supervision: ``forward`` returns ``n_maps`` logit maps at the input size. Abstract: a
    subclass that does not say how its maps become the prediction cannot be instantiated."""

    #: how many maps ``forward`` returns
    n_maps: int = 1

    @abstractmethod
    def prediction(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The one logit map used for inference, from ``forward``'s maps."""
