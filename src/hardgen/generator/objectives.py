"""The training objectives beyond denoising: the hardness loss (Wan et al.), the feedback baseline, x̂0.

``HardnessJudge`` holds the frozen in-loss backbones and their real-data prototypes; ``FeedbackJudge`` the
fixed real-trained segmenter. Both are differentiable with respect to the images they judge, so their
terms reach the LoRA through the VAE decode of x̂0.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from hardgen.generator.train_settings import PREDICTION_TYPES, TrainSettings

logger = logging.getLogger("hardgen.generator.train")

# --------------------------------------------------------------------------------------------------
# Losses (separately tested)
# --------------------------------------------------------------------------------------------------


def squared_hinge(values: torch.Tensor, margin: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean(max(0, margin − values)²)`` and the fraction of entries where the hinge is active."""
    gap = torch.clamp(margin - values, min=0.0)
    return (gap**2).mean(), (gap > 0).float().mean()


def dissimilarity_loss(
    features: torch.Tensor, prototype: torch.Tensor, margin: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's L_dis: ``mean_b max(0, m − ‖f_b − p‖₂)²``, plus the fraction of active samples.

    ``features`` is (B, D), ``prototype`` is (D,). Minimising it moves each feature away from the
    prototype until it is ``margin`` away, after which the sample contributes nothing.
    """
    if features.ndim != 2 or prototype.ndim != 1 or features.shape[1] != prototype.shape[0]:
        raise ValueError(f"dissimilarity_loss: features {tuple(features.shape)} vs prototype {tuple(prototype.shape)}")
    distances = torch.linalg.vector_norm(features - prototype.to(features), dim=1)
    return squared_hinge(distances, margin)


def feedback_loss(segmentation_losses: torch.Tensor, margin: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The feedback term ``mean max(0, m − ℓ_seg)² / m²`` over per-sample segmenter losses (B,).

    The squared hinge on the *relative* gap ``(m − ℓ_seg)/m``, as :func:`hardness_loss` balances several
    backbones: the margin is itself relative (``feedback.margin_factor`` × the judge's loss on plain samples), and
    the structure loss lives on a scale (~5 for a fresh judge) whose raw squared gap would outweigh the diffusion
    loss (~0.1) a hundredfold at the same ``lambda`` (measured on the demo: the unnormalised term, 11.7 against an
    MSE of 0.29 at the first step, broke every feedback sample in 20 steps), where the hard term stays at the
    diffusion loss's scale. Scale-free: multiplying losses and margin by k leaves it unchanged.
    """
    if segmentation_losses.ndim != 1:
        raise ValueError(f"feedback_loss: expected per-sample losses (B,), got {tuple(segmentation_losses.shape)}")
    if not float(margin) > 0:
        raise ValueError(f"feedback_loss: the margin must be > 0, got {float(margin)}")
    value, active = squared_hinge(segmentation_losses, margin)
    return value / float(margin) ** 2, active


def segmentation_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy per sample (B,) of binary logits (B, 1, h, w) against a (B, 1, H, W) mask.

    Logits at another size are upsampled (bilinear) to the mask's, as transformers' SegFormer computes its loss;
    binary, so the cross-entropy is the BCE of the logits (the authors' −0.01 × CE feedback term).
    """
    if logits.ndim != 4 or logits.shape[1] != 1 or target.ndim != 4:
        raise ValueError(f"segmentation_ce: expected (B, 1, h, w) logits and (B, 1, H, W) masks, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return bce.mean(dim=(1, 2, 3))


def predict_x0(
    noisy_latents: torch.Tensor,
    model_output: torch.Tensor,
    alphas_cumprod_t: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """One-step estimate of the clean latent from the UNet output at timestep t.

    epsilon: x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t; v_prediction: x̂0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂.
    ``alphas_cumprod_t`` is (B,) and is broadcast over the latent dimensions.
    """
    alpha = alphas_cumprod_t.to(torch.float32).view(-1, *([1] * (noisy_latents.ndim - 1)))
    x_t, out = noisy_latents.float(), model_output.float()
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha).sqrt() * out) / alpha.sqrt()
    if prediction_type == "v_prediction":
        return alpha.sqrt() * x_t - (1 - alpha).sqrt() * out
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def resolve_prediction_type(scheduler_config: Any, requested: str | None, base: str) -> str:
    """The base model's prediction type (its scheduler config, as control-lora-v3 reads it).

    ``requested`` (``train.prediction_type``) may only confirm it: training a LoRA on another target than
    the one generation will sample with gives broken images without any error, so a disagreement is one.
    """
    found = getattr(scheduler_config, "prediction_type", None) or scheduler_config.get("prediction_type")
    if found not in PREDICTION_TYPES:
        raise ValueError(f"{base}: scheduler config has prediction_type {found!r}, expected one of {PREDICTION_TYPES}")
    if requested is not None and requested != found:
        raise ValueError(f"train.prediction_type: {requested!r} disagrees with the base model's scheduler "
                         f"({base}: {found!r}); remove the key or fix it")
    return found


# --------------------------------------------------------------------------------------------------
# Hardness / feedback judges
# --------------------------------------------------------------------------------------------------


def hardness_loss(
    distances: dict[str, torch.Tensor], margins: dict[str, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hard generator's extra loss from per-backbone distances ‖f − p‖₂ (each (B,)).

    One backbone: the paper's ``L_dis = mean_b max(0, m − d_b)²``, unnormalised. Several: the mean over
    backbones of ``L_dis,k / m_k²``, i.e. the squared hinge on the *relative* gap ``(m_k − d)/m_k``, so a
    backbone whose distances live on a 20× smaller scale still moves its samples (unbalanced, the summed
    loss is all the large-scale backbone). Returns the loss and the fraction of samples whose hinge is
    active under any backbone.
    """
    if not distances:
        raise ValueError("hardness_loss: no backbone distances")
    missing = sorted(set(distances) - set(margins))
    if missing:
        raise ValueError(f"hardness_loss: no margin for backbone(s) {missing}")
    terms, any_active = [], None
    for key, values in distances.items():
        term, _ = squared_hinge(values, margins[key])
        terms.append(term if len(distances) == 1 else term / float(margins[key]) ** 2)
        active = (margins[key] - values) > 0
        any_active = active if any_active is None else any_active | active
    return torch.stack(terms).mean(), any_active.float().mean()


class HardnessJudge:
    """Frozen in-loss backbones + their prototypes: per-backbone distances and :func:`hardness_loss`."""

    def __init__(self, settings: TrainSettings, device: torch.device) -> None:
        from hardgen.scoring import features
        self.pad = settings.crop_pad
        self.backbones: dict[str, torch.nn.Module] = {}
        self.prototypes: dict[str, torch.Tensor] = {}
        self.sizes: dict[str, int] = {}
        #: (mean, sd) of the real training features' distances to each prototype
        self.real_spread: dict[str, tuple[float, float]] = {}
        for key, entry in sorted(settings.backbones.items()):
            spec = features.BackboneSpec.from_config(key, entry)
            self.backbones[key] = features.load_backbone(spec, device, config_key=key)
            proto = features.load_prototype(settings.prototypes[key])
            features.check_prototype(proto, settings.prototypes[key], self.backbones[key], settings.resolution, key)
            self.prototypes[key] = proto.prototype.to(device)
            self.sizes[key] = spec.input_size
            self.real_spread[key] = (proto.real_mean, proto.real_std)

    def features(self, images01: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features (B, D) of the mask-box crops, differentiable wrt the images."""
        from hardgen.scoring import features
        out = {}
        for key, backbone in self.backbones.items():
            crops = features.crop_to_mask(images01, masks, self.pad, self.sizes[key], via=backbone.resize_via)
            out[key] = backbone(crops).float()
        return out

    def distances(self, images01: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """‖f − p‖₂ per sample (B,) for every backbone."""
        from hardgen.scoring import features
        return {key: features.prototype_distance(f, self.prototypes[key])
                for key, f in self.features(images01, masks).items()}

    def loss(self, images01: torch.Tensor, masks: torch.Tensor,
             margins: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`hardness_loss` of the images' distances, and the fraction of samples with an active hinge."""
        return hardness_loss(self.distances(images01, masks), margins)

    def check_margins(self, margins: dict[str, float]) -> list[str]:
        """Log each margin against the real features' distance spread; return warnings for useless margins.

        A margin below the real mean distance is already met by a typical real image (the term does
        nearly nothing); one beyond mean + 10 sd asks for samples no real image resembles.
        """
        warnings = []
        for key, margin in margins.items():
            mean, sd = self.real_spread[key]
            logger.info("margin %s = %.4g; real distance to the prototype %.4g ± %.4g (margin = mean %+.2f sd)",
                        key, margin, mean, sd, (margin - mean) / sd if sd > 0 else float("inf"))
            if margin < mean:
                warnings.append(f"margin for backbone {key!r} ({margin:.4g}) is below the real features' mean "
                                f"distance {mean:.4g}: the hardness term does little")
            elif sd > 0 and margin > mean + 10 * sd:
                warnings.append(f"margin for backbone {key!r} ({margin:.4g}) is more than 10 sd ({sd:.4g}) beyond the "
                                f"real mean distance {mean:.4g}: it asks for samples unlike any real image")
        for message in warnings:
            logger.warning(message)
        return warnings


class FeedbackJudge:
    """A fixed real-trained segmenter; per-sample structure loss of its prediction on x̂0.

    ``feedback.judge_input``: ``segment_size`` resizes x̂0 (bilinear) to ``segment.size``, the size the judge was
    trained at; ``generated`` feeds it as generated (``model.resolution``), as the authors feed their SegFormer the
    512² x̂0 (train_feedback.py:1005, 1395-1396). The mask follows the image's size (nearest).
    """

    def __init__(self, settings: TrainSettings, device: torch.device) -> None:
        from hardgen.segmentation.build import SegmenterSpec, load_segmenter
        from hardgen.segmentation.datasets import IMAGENET_MEAN, IMAGENET_STD

        spec = SegmenterSpec.from_config(dict(settings.segmenter or {}), "feedback.segmenter")
        self.model = load_segmenter(spec, settings.segmenter_weights, device, config_key="feedback.segmenter")
        self.model.requires_grad_(False)
        #: the side x̂0 is resized to before the judge; None = as generated (``feedback.judge_input``)
        self.size: int | None = settings.segment_size if settings.judge_input == "segment_size" else None
        self.seg_loss = settings.seg_loss
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def losses(self, images01: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The judge's loss per sample (B,), differentiable wrt the images: ``feedback.seg_loss`` structure
        (PraNet's) or ce (pixel-wise cross-entropy, the authors' SegFormer loss; binary, so BCE on the logits)."""
        from hardgen.models.archs import predict_logits
        from hardgen.segmentation.losses import structure_loss_per_sample

        x = images01.float()
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        target = F.interpolate(masks.float(), size=x.shape[-2:], mode="nearest")
        logits = predict_logits(self.model, x)  # the prediction map (PraNet: last; Polyp-PVT: P1 + P2)
        if self.seg_loss == "ce":
            return segmentation_ce(logits, target)
        return structure_loss_per_sample(logits, target)

    def loss(self, images01: torch.Tensor, masks: torch.Tensor, margin: float | None,
             kind: str = "hinge") -> tuple[torch.Tensor, torch.Tensor]:
        """``hinge``: :func:`feedback_loss` with ``margin``; ``negated``: −mean ℓ_seg (unbounded, all active)."""
        losses = self.losses(images01, masks)
        if kind == "negated":
            return -losses.mean(), torch.ones((), device=losses.device)
        if margin is None:
            raise ValueError("feedback hinge loss needs a calibrated margin")
        return feedback_loss(losses, margin)
