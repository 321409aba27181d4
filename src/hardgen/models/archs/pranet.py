"""PraNet (Fan et al., "PraNet: Parallel Reverse Attention Network for Polyp Segmentation", MICCAI 2020).

Written from the paper's description and the structure of the authors' released model:

* backbone: Res2Net-50 v1b 26w4s (deep stem, average-pool downsampling) = timm's ``res2net50d``; its features
  at strides 8, 16 and 32 (512, 1024, 2048 channels) feed the head;
* three receptive-field blocks (RFB: four parallel branches of 1×1, 1×k, k×1 and a 3×3 conv dilated k, for
  k = 3, 5, 7, concatenated, fused by a 3×3 conv, plus a 1×1 residual, then ReLU) reduce each level to 32 channels;
* a partial decoder aggregates the three levels into a global map at stride 8 (map 1);
* three reverse-attention stages, deepest first: each erases the current estimate from a backbone level
  (features × (1 − sigmoid(map))), refines the residual with a small conv stack and adds it to the map
  (stride 32: 1×1 to 256 channels, three 5×5, 1×1 to one; strides 16 and 8: 1×1 to 64, two 3×3, 3×3 to one);
* four deeply supervised maps (global, stride 32, 16, 8), each upsampled to the input size; the prediction is
  the last one (the authors' ``lateral_map_2``), and the loss is the structure loss summed over all four.

Every conv is conv + BatchNorm without activation (the released ``BasicConv2d``), except where ReLU is named.
With ``res2net50d`` the model has 30,498,319 parameters: the released PraNet's 32,547,319 less the 2,049,000 of
the ImageNet classifier its backbone keeps but never uses (``features_only`` drops it here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hardgen.models.archs.common import (
    ConvBN,
    MultiMapSegmenter,
    pick_levels,
    timm_backbone,
    upsample_to,
)

#: channels of the RFB outputs and the partial decoder (the authors' ``channel=32``)
CHANNELS = 32


class RFB(nn.Module):
    """Receptive-field block: a 1×1 branch and three (1×1, 1×k, k×1, 3×3 dilated k) branches, k = 3, 5, 7."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        branches = [nn.Sequential(ConvBN(in_channels, out_channels, 1))]
        for k in (3, 5, 7):
            branches.append(nn.Sequential(
                ConvBN(in_channels, out_channels, 1),
                ConvBN(out_channels, out_channels, (1, k), padding=(0, k // 2)),
                ConvBN(out_channels, out_channels, (k, 1), padding=(k // 2, 0)),
                ConvBN(out_channels, out_channels, 3, padding=k, dilation=k),
            ))
        self.branches = nn.ModuleList(branches)
        self.fuse = ConvBN(4 * out_channels, out_channels, 3, padding=1)
        self.residual = ConvBN(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return F.relu(fused + self.residual(x))


def _up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The decoders' ×2 bilinear upsampling (align_corners True), written as a resize to ``ref``'s size."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


class PartialDecoder(nn.Module):
    """Dense aggregation of three levels (deepest first) at the shallowest one's stride.

    Shared by PraNet (its partial decoder, ``out_channels = 3 × channels``) and Polyp-PVT (its cascaded fusion
    module, CFM, ``out_channels = channels``).
    """

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        c = channels
        self.up_deep_to_mid = ConvBN(c, c, 3, padding=1)
        self.up_deep_to_shallow = ConvBN(c, c, 3, padding=1)
        self.up_mid_to_shallow = ConvBN(c, c, 3, padding=1)
        self.up_deep_concat = ConvBN(c, c, 3, padding=1)
        self.up_mid_concat = ConvBN(2 * c, 2 * c, 3, padding=1)
        self.concat_mid = ConvBN(2 * c, 2 * c, 3, padding=1)
        self.concat_shallow = ConvBN(3 * c, 3 * c, 3, padding=1)
        self.out = ConvBN(3 * c, out_channels, 3, padding=1)

    def forward(self, deep: torch.Tensor, mid: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        deep_at_mid = _up_to(deep, mid)
        deep_at_shallow = _up_to(deep_at_mid, shallow)
        mid_gated = self.up_deep_to_mid(deep_at_mid) * mid
        shallow_gated = (self.up_deep_to_shallow(deep_at_shallow) * self.up_mid_to_shallow(_up_to(mid, shallow))
                         * shallow)
        mid_cat = self.concat_mid(torch.cat([mid_gated, self.up_deep_concat(deep_at_mid)], dim=1))
        shallow_cat = self.concat_shallow(torch.cat([shallow_gated, self.up_mid_concat(_up_to(mid_cat, shallow))],
                                                    dim=1))
        return self.out(shallow_cat)


class ReverseAttention(nn.Module):
    """Erase the current map from a feature level and predict the residual: ``map + f((1 − σ(map)) · x)``."""

    def __init__(self, in_channels: int, mid_channels: int, kernel: int, n_mid: int, out_kernel: int) -> None:
        super().__init__()
        self.reduce = ConvBN(in_channels, mid_channels, 1)
        self.mid = nn.ModuleList(ConvBN(mid_channels, mid_channels, kernel, padding=kernel // 2) for _ in range(n_mid))
        self.out = ConvBN(mid_channels, 1, out_kernel, padding=out_kernel // 2)

    def forward(self, features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        x = (1.0 - torch.sigmoid(guide)) * features  # broadcast over the channels
        x = self.reduce(x)
        for conv in self.mid:
            x = F.relu(conv(x))
        return self.out(x) + guide


class PraNet(MultiMapSegmenter):
    """PraNet on a timm backbone (``res2net50d`` as released); four logit maps, prediction = the last."""

    n_maps = 4

    def __init__(self, encoder: str = "res2net50d", pretrained: bool = False) -> None:
        super().__init__()
        self.encoder = timm_backbone(encoder, pretrained)
        self.levels = pick_levels(self.encoder, (8, 16, 32))
        c8, c16, c32 = (self.encoder.feature_info.channels()[i] for i in self.levels)
        self.rfb8, self.rfb16, self.rfb32 = RFB(c8, CHANNELS), RFB(c16, CHANNELS), RFB(c32, CHANNELS)
        self.decoder = PartialDecoder(CHANNELS, 3 * CHANNELS)
        self.decoder_head = nn.Conv2d(3 * CHANNELS, 1, 1)
        self.ra32 = ReverseAttention(c32, 256, kernel=5, n_mid=3, out_kernel=1)
        self.ra16 = ReverseAttention(c16, 64, kernel=3, n_mid=2, out_kernel=3)
        self.ra8 = ReverseAttention(c8, 64, kernel=3, n_mid=2, out_kernel=3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = x.shape[-2:]
        features = self.encoder(x)
        f8, f16, f32 = (features[i] for i in self.levels)
        global_map = self.decoder_head(self.decoder(self.rfb32(f32), self.rfb16(f16), self.rfb8(f8)))  # stride 8
        map32 = self.ra32(f32, upsample_to(global_map, f32.shape[-2:]))
        map16 = self.ra16(f16, upsample_to(map32, f16.shape[-2:]))
        map8 = self.ra8(f8, upsample_to(map16, f8.shape[-2:]))
        return tuple(upsample_to(m, size) for m in (global_map, map32, map16, map8))

    def prediction(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The last, finest map (the released model's ``lateral_map_2``)."""
        return maps[-1]
