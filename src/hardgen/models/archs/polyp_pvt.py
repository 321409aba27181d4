"""Polyp-PVT (Dong et al., "Polyp-PVT: Polyp Segmentation with Pyramid Vision Transformers", CAAI AIR 2023).

Written from the paper's description and the structure of the authors' released model:

* backbone: PVTv2-B2 = timm's ``pvt_v2_b2`` (stochastic depth 0.1 as released), four levels at strides 4-32
  (64, 128, 320, 512 channels);
* CIM (camouflage identification module) on the stride-4 level: channel attention (average- and max-pooled
  descriptors through a shared 1×1 bottleneck of C/16, summed, sigmoid) then spatial attention (channel mean and
  max, 7×7 conv, sigmoid) — low-level detail;
* CFM (cascaded fusion module) on the three deeper levels, each first reduced to 32 channels by a 1×1 conv:
  the same dense aggregation as PraNet's partial decoder, ending in 32 channels at stride 8 — high-level semantics;
* SAM (similarity aggregation module): the CIM features (reduced to 32 channels, halved to stride 8) act as a soft
  mask over the CFM features; a 4 × 4 grid of masked, pooled anchors (the inner cells of a 6 × 6 adaptive average
  pool) projects every pixel onto 16 graph nodes, one graph-convolution step (node mixing minus identity, then a
  1×1 state update and ReLU) reasons over them, and the result is projected back and added to the CFM features;
* two maps: P1 from the CFM features, P2 from the SAM output (1×1 convs), upsampled ×8 to the input size; the loss
  is P1's plus P2's structure loss and the prediction is P1 + P2.

Every "conv" is conv + BatchNorm without activation (the released ``BasicConv2d``) unless a bias is named. With
``pvt_v2_b2`` the model has 25,107,604 parameters, the released count (the released backbone has no classifier).
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
from hardgen.models.archs.pranet import PartialDecoder

#: channels of the reduced levels, the CFM and the SAM (the authors' ``channel=32``)
CHANNELS = 32
#: SAM: channels of the graph states and the grid of anchors (4 × 4 = 16 nodes)
SAM_STATES, SAM_GRID = 16, 4
#: drop-path rate of the released PVTv2 backbone
DROP_PATH_RATE = 0.1


class ChannelAttention(nn.Module):
    """Sigmoid gate per channel from average- and max-pooled descriptors through a shared C → C/16 → C bottleneck."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.excite = nn.Conv2d(channels // ratio, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.excite(F.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1))))
        peak = self.excite(F.relu(self.squeeze(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """Sigmoid gate per pixel from the channel mean and max through a 7×7 conv."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class GraphReasoning(nn.Module):
    """One graph-convolution step over (B, states, nodes): mix the nodes (1×1 over the node axis) minus identity,
    then update the states (1×1 over the state axis, no bias) and ReLU."""

    def __init__(self, states: int, nodes: int) -> None:
        super().__init__()
        self.node_mix = nn.Conv1d(nodes, nodes, 1)
        self.state_update = nn.Conv1d(states, states, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.node_mix(x.transpose(1, 2)).transpose(1, 2) - x
        return F.relu(self.state_update(mixed))


class SimilarityAggregation(nn.Module):
    """SAM: graph reasoning over anchors pooled from the features under a soft mask from the low-level branch."""

    def __init__(self, channels: int = CHANNELS, states: int = SAM_STATES, grid: int = SAM_GRID) -> None:
        super().__init__()
        self.grid = grid
        self.to_state = nn.Conv2d(channels, states, 1)
        self.to_projection = nn.Conv2d(channels, states, 1)
        self.graph = GraphReasoning(states, grid * grid)
        self.back = nn.Conv2d(states, channels, 1, bias=False)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        guide = F.interpolate(guide, size=(h, w), mode="nearest")
        soft_mask = torch.softmax(guide, dim=1)[:, 1:2]  # the second channel's share, as released
        state = self.to_state(x).flatten(2)  # (n, S, hw)
        projection = self.to_projection(x)  # (n, S, h, w)
        pooled = F.adaptive_avg_pool2d(projection * soft_mask, self.grid + 2)[:, :, 1:-1, 1:-1]
        anchors = pooled.flatten(2)  # (n, S, nodes): the inner grid cells
        # each pixel's affinity to each anchor, normalised over the anchors
        affinity = torch.softmax(anchors.transpose(1, 2) @ projection.flatten(2), dim=1)  # (n, nodes, hw)
        nodes = state @ affinity.transpose(1, 2)  # (n, S, nodes)
        back = (self.graph(nodes) @ affinity).view(n, -1, h, w)
        return x + self.back(back)


class PolypPVT(MultiMapSegmenter):
    """Polyp-PVT on a timm PVTv2 (``pvt_v2_b2`` as released); two logit maps, prediction = their sum."""

    n_maps = 2

    def __init__(self, encoder: str = "pvt_v2_b2", pretrained: bool = False) -> None:
        super().__init__()
        self.encoder = timm_backbone(encoder, pretrained, drop_path_rate=DROP_PATH_RATE)
        self.levels = pick_levels(self.encoder, (4, 8, 16, 32))
        c4, c8, c16, c32 = (self.encoder.feature_info.channels()[i] for i in self.levels)
        self.reduce4, self.reduce8 = ConvBN(c4, CHANNELS, 1), ConvBN(c8, CHANNELS, 1)
        self.reduce16, self.reduce32 = ConvBN(c16, CHANNELS, 1), ConvBN(c32, CHANNELS, 1)
        self.cfm = PartialDecoder(CHANNELS, CHANNELS)
        self.channel_attention = ChannelAttention(c4)
        self.spatial_attention = SpatialAttention()
        self.sam = SimilarityAggregation()
        self.head_cfm = nn.Conv2d(CHANNELS, 1, 1)
        self.head_sam = nn.Conv2d(CHANNELS, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        features = self.encoder(x)
        f4, f8, f16, f32 = (features[i] for i in self.levels)
        cim = f4 * self.channel_attention(f4)
        cim = cim * self.spatial_attention(cim)
        cfm = self.cfm(self.reduce32(f32), self.reduce16(f16), self.reduce8(f8))  # stride 8
        low = F.interpolate(self.reduce4(cim), size=cfm.shape[-2:], mode="bilinear", align_corners=True)
        sam = self.sam(cfm, low)
        return upsample_to(self.head_cfm(cfm), size), upsample_to(self.head_sam(sam), size)

    def prediction(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """P1 + P2, as the authors' test script scores."""
        return maps[0] + maps[1]
