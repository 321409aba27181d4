"""SegFormer through transformers (``SegformerForSemanticSegmentation``): the authors' feedback judge.

The model is built from a :class:`transformers.SegformerConfig` whose encoder sizes come from a named MiT preset
(:data:`MIT_PRESETS`, the sizes of the published mit-b0 ... mit-b5), with one output label (binary logits). Nothing
is downloaded unless pretrained weights are asked for: ``encoder_weights: imagenet`` loads the ImageNet-1k MiT
encoder ``nvidia/<preset>`` (or give a hub id such as ``nvidia/mit-b2``, or a local ``save_pretrained`` folder as
``checkpoint``); the decode head starts random. Remote code is never trusted. SegFormer predicts at stride 4; the
logits are upsampled (bilinear) to the input size, as transformers' own loss does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardgen.models.archs.common import upsample_to

#: SegformerConfig values of the MiT encoders (and the all-MLP decoder's width) by preset name.
MIT_PRESETS: dict[str, dict[str, Any]] = {
    "mit-b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "mit-b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "mit-b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    "mit-b3": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 18, 3], "decoder_hidden_size": 768},
    "mit-b4": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 8, 27, 3], "decoder_hidden_size": 768},
    "mit-b5": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "decoder_hidden_size": 768},
}
#: shared by every preset
MIT_COMMON: dict[str, Any] = {"num_attention_heads": [1, 2, 5, 8], "sr_ratios": [8, 4, 2, 1],
                              "mlp_ratios": [4, 4, 4, 4]}


def preset_name(encoder: str) -> str:
    """``mit_b2`` / ``mit-b2`` -> ``mit-b2``; ValueError for an unknown preset."""
    name = encoder.strip().lower().replace("_", "-")
    if name not in MIT_PRESETS:
        raise ValueError(f"unknown SegFormer preset {encoder!r}; known: {sorted(MIT_PRESETS)}")
    return name


def segformer_config(encoder: str) -> Any:
    """The :class:`transformers.SegformerConfig` of a preset, one label."""
    from transformers import SegformerConfig

    return SegformerConfig(num_labels=1, **MIT_COMMON, **MIT_PRESETS[preset_name(encoder)])


class HFSegformer(nn.Module):
    """transformers' SegFormer as a one-map segmenter: (B, 3, H, W) -> (B, 1, H, W) logits."""

    def __init__(self, encoder: str = "mit-b0", encoder_weights: str | None = None,
                 checkpoint: str | None = None) -> None:
        super().__init__()
        from transformers import SegformerForSemanticSegmentation

        config = segformer_config(encoder)
        source = None
        if checkpoint and Path(checkpoint).is_dir():  # a local save_pretrained folder
            source, local = str(checkpoint), True
        elif encoder_weights:
            source = f"nvidia/{preset_name(encoder)}" if encoder_weights == "imagenet" else str(encoder_weights)
            local = False
        if source is None:
            self.model = SegformerForSemanticSegmentation(config)
        else:
            self.model = SegformerForSemanticSegmentation.from_pretrained(
                source, config=config, local_files_only=local, trust_remote_code=False)

    @property
    def encoder(self) -> nn.Module:
        """The MiT encoder (what an encoder-only checkpoint holds)."""
        return self.model.segformer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.model(pixel_values=x).logits, x.shape[-2:])
