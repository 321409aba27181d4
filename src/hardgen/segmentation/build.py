"""Polyp segmenters by name: the ``segment.archs`` entry (:class:`SegmenterSpec`), building, checkpoints, loading.

Architectures are named strings: smp's registry (``smp.create_model``), or the field's polyp segmenters of
:mod:`hardgen.models.archs` (``PraNet``, ``PolypPVT``, ``HFSegformer``), so the config chooses families without code
changes. PraNet and Polyp-PVT return several deeply supervised maps; :func:`hardgen.models.archs.predict_logits` is
the one place every inference path gets the single prediction map from (PraNet: the last map; Polyp-PVT: the sum of
its two).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from hardgen.config.settings import SegmenterConfig
from hardgen.core.weights import load_state_dict
from hardgen.models.archs import (
    build_field_arch,
    encoder_problem,
    is_field_arch,
    map_count,
)

log = logging.getLogger(__name__)

#: The keys of a ``segment.archs.<key>`` entry (hardgen.config.settings.SegmenterConfig): what builds the model
#: (:class:`SegmenterSpec`), the per-arch recipe keys that override ``segment.*``
#: (:func:`hardgen.segmentation.recipes.resolve_recipe`) and ``published`` (the anchors file's model name; the report's).
ARCH_KEYS: tuple[str, ...] = tuple(SegmenterConfig.keys())


@dataclass(frozen=True)
class SegmenterSpec:
    """What segmenter to build: an architecture and encoder, plus optional local weights.

    ``arch``: smp architecture name (``Unet``, ``FPN``, ``Segformer``, ...; case-insensitive) or a field arch of
    :mod:`hardgen.models.archs` (``PraNet``, ``PolypPVT``: a timm encoder name; ``HFSegformer``: a MiT preset,
    mit-b0 ...).
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

        The entry's recipe keys and ``published`` are accepted and left to
        :func:`hardgen.segmentation.recipes.resolve_recipe` / the report.
        """
        where = f"segment.archs.{config_key}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with keys arch, encoder, got {type(entry).__name__}")
        for key in ("arch", "encoder"):
            if not entry.get(key):
                raise ValueError(f"{where}.{key}: missing or empty")
        # published: the anchor model the report compares this arch's real-only runs with
        # (hardgen.evaluation.reproduction)
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

    smp models return one map; the field's multi-map segmenters a tuple (:func:`hardgen.models.archs.output_maps`,
    :func:`hardgen.models.archs.predict_logits`).
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
            load_segmenter_checkpoint(model, Path(spec.checkpoint), _where(config_key, "checkpoint"))
        return model
    try:
        model = smp.create_model(
            spec.arch, encoder_name=spec.encoder, encoder_weights=spec.encoder_weights, in_channels=3, classes=1
        )
    except (KeyError, ValueError) as err:  # e.g. an encoder that does not support this architecture
        raise ValueError(f"{_where(config_key, 'arch')}: cannot build {spec.arch}/{spec.encoder}: {err}") from err
    if spec.checkpoint:
        load_segmenter_checkpoint(model, Path(spec.checkpoint), _where(config_key, "checkpoint"))
    return model


def build_random_segmenter(entry: Mapping[str, Any], config_key: str) -> tuple[SegmenterSpec, nn.Module]:
    """The spec of one ``segment.archs`` entry and its model as hardgen builds it, with random weights (its
    ``encoder_weights`` and ``checkpoint`` are ignored: nothing is downloaded or read; built on the current default
    device, e.g. inside ``torch.device("meta")``)."""
    spec = SegmenterSpec.from_config(dict(entry), config_key)
    return spec, build_segmenter(SegmenterSpec(arch=spec.arch, encoder=spec.encoder), config_key)


def summarize_segmenter(entry: Mapping[str, Any], config_key: str) -> dict[str, Any]:
    """``{"arch": config_key, "params": N, "maps": M}`` of one ``segment.archs`` entry, built with random weights
    (:func:`build_random_segmenter`). ``params`` counts every parameter of the model as hardgen builds it (for PraNet
    without the backbone's unused ImageNet classifier), ``maps`` the maps its loss is summed over."""
    _, model = build_random_segmenter(entry, config_key)
    return {"arch": config_key, "params": int(sum(p.numel() for p in model.parameters())), "maps": map_count(model)}


def load_segmenter_checkpoint(model: nn.Module, path: Path, where: str) -> None:
    """Load a segmenter checkpoint (``segment.archs.<key>.checkpoint``: a whole-model or encoder-only state dict, e.g.
    a timm/torchvision backbone export) into ``model``; raise ValueError naming ``where`` and the file on mismatch."""
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
    """Build ``spec`` and load a trained ``model.safetensors`` (as written by
    :func:`hardgen.segmentation.training.train_segmenter`); eval mode.

    Predict with :func:`hardgen.models.archs.predict_logits` (the single map of a multi-map segmenter), never by
    calling the model.
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

