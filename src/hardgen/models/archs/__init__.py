"""The field's polyp segmenters as first-class ``segment.archs`` types, beside smp's architectures.

``arch: PraNet`` (encoder ``res2net50d``), ``arch: PolypPVT`` (encoder ``pvt_v2_b2``; ``pvt_v2_b0``/``b1`` for small
runs) and ``arch: HFSegformer`` (transformers' SegFormer, encoder a MiT preset ``mit-b0`` ... ``mit-b5``). PraNet and
Polyp-PVT return several deeply supervised logit maps (:class:`MultiMapSegmenter`); :func:`predict_logits` is the
one place that turns any segmenter's output into its single prediction map, :func:`output_maps` the maps its
loss is summed over.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hardgen.models.archs.common import MultiMapSegmenter

#: field arch name (lower case) -> (canonical name, default encoder)
FIELD_ARCHS: dict[str, tuple[str, str]] = {
    "pranet": ("PraNet", "res2net50d"),
    "polyppvt": ("PolypPVT", "pvt_v2_b2"),
    "hfsegformer": ("HFSegformer", "mit-b0"),
}


def is_field_arch(arch: str) -> bool:
    """Whether ``arch`` names one of this package's architectures (case-insensitive)."""
    return arch.lower() in FIELD_ARCHS


def encoder_problem(arch: str, encoder: str) -> str | None:
    """Why ``encoder`` cannot serve field arch ``arch``; None if it can (no model is built)."""
    if arch.lower() == "hfsegformer":
        from hardgen.models.archs.hf_segformer import preset_name

        try:
            preset_name(encoder)
        except ValueError as err:
            return str(err)
        return None
    import timm

    if not timm.is_model(encoder):
        return f"{encoder!r} is not a timm model name (PraNet: res2net50d; Polyp-PVT: pvt_v2_b2)"
    return None


def build_field_arch(arch: str, encoder: str, encoder_weights: str | None = None,
                     checkpoint: str | None = None) -> nn.Module:
    """Build a field arch; random weights unless ``encoder_weights`` (``imagenet``: timm's / the hub's weights).

    A ``checkpoint`` file is loaded by the caller (:func:`hardgen.segmentation.build.build_segmenter`); HFSegformer also
    takes a local ``save_pretrained`` folder as ``checkpoint``.
    """
    key = arch.lower()
    if key not in FIELD_ARCHS:
        raise ValueError(f"unknown field architecture {arch!r}; known: {[v[0] for v in FIELD_ARCHS.values()]}")
    if key == "hfsegformer":
        from hardgen.models.archs.hf_segformer import HFSegformer

        return HFSegformer(encoder, encoder_weights=encoder_weights, checkpoint=checkpoint)
    if encoder_weights not in (None, "imagenet"):
        raise ValueError(f"encoder_weights: {encoder_weights!r}; {FIELD_ARCHS[key][0]} takes imagenet (timm's "
                         "weights for the encoder, e.g. res2net50d.in1k) or null")
    builder: Callable[..., nn.Module]
    if key == "pranet":
        from hardgen.models.archs.pranet import PraNet as builder
    else:
        from hardgen.models.archs.polyp_pvt import PolypPVT as builder
    return builder(encoder, pretrained=encoder_weights == "imagenet")


def output_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every logit map the model returns for ``x`` (one for smp models and HFSegformer), input-sized."""
    out = model(x)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def prediction_from_maps(model: nn.Module, maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The single prediction map from :func:`output_maps`' maps (PraNet: the last; Polyp-PVT: their sum)."""
    if isinstance(model, MultiMapSegmenter):
        return model.prediction(maps)
    if len(maps) != 1:
        raise ValueError(f"{type(model).__name__} returned {len(maps)} maps but defines no prediction rule")
    return maps[0]


def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The one (B, 1, H, W) logit map a segmenter predicts for ``x``: every inference path calls this."""
    out = model(x)
    if isinstance(out, torch.Tensor):
        return out
    return prediction_from_maps(model, tuple(out))


def map_count(model: nn.Module) -> int:
    """How many maps the model's loss is summed over."""
    return int(model.n_maps) if isinstance(model, MultiMapSegmenter) else 1


__all__ = ["FIELD_ARCHS", "MultiMapSegmenter", "build_field_arch", "encoder_problem", "is_field_arch", "map_count",
           "output_maps", "predict_logits", "prediction_from_maps"]
