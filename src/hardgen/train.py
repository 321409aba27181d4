"""Control-LoRA training: plain, hardness fine-tuning ("hard") and model-specific feedback ("feedback").

The mechanics follow control-lora-v3 on public diffusers / peft / accelerate APIs: a frozen Stable
Diffusion (SD1.5 or SDXL) whose ``conv_in`` is widened to read the VAE latent of the condition image,
with peft LoRA adapters as the only trainable parameters.

* ``plain``: the denoising MSE on the noise (or velocity).
* ``hard`` (Wan et al.): start from a plain LoRA and add ``λ · L_dis``, a squared hinge that pushes the
  frozen-backbone features of the predicted clean image x̂0 (cropped to the mask) at least a margin
  away from the real-data prototype of each backbone.
* ``feedback`` (ArSDM-style baseline): start from a plain LoRA and add ``λ · mean max(0, m − ℓ_seg)²``,
  rewarding samples on which one fixed real-trained segmenter does badly, up to a margin.

Margins are calibrated at the start of fine-tuning from the plain LoRA's own x̂0 samples, so they are
on the scale of the backbone (or segmenter) actually used.

Entry points: :func:`train_control_lora` (a :class:`TrainSettings`), and :func:`main` for
``[accelerate launch] python -m hardgen.train --settings FILE.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from tqdm.auto import tqdm

from hardgen.io import DataError, read_mask, read_rgb, resolve_table_path, write_csv, write_image, write_json

logger = logging.getLogger("hardgen.train")

MODES = ("plain", "hard", "feedback")
FAMILIES = ("sd15", "sdxl")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "v_prediction")
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: Extra per-checkpoint state (step, calibrated margins, log so far) written next to accelerate's files.
TRAINER_STATE_NAME = "hardgen_trainer_state.json"
LOG_COLUMNS = ["step", "loss", "mse", "extra", "active_fraction", "lr"]


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became non-finite; the message names the optimizer step."""


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    """Every option of a training run in one place; round-trips through JSON."""

    base: str
    conditions_csv: str
    manifest_csv: str
    out_dir: str
    family: str = "sd15"
    resolution: int = 512
    prompt: str = ""
    mode: str = "plain"
    init_lora: str | None = None
    # LoRA layout (control-lora-v3)
    preset: str = "half_skip_attn"
    rank: int = 16
    conv_in_rank: int = 64
    lora_init: str = "gaussian"
    # optimisation
    steps: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    loraplus_lr_ratio: float = 1.0
    use_8bit_adam: bool = False
    max_grad_norm: float = 1.0
    empty_prompt_prob: float = 0.1
    prediction_type: str = "epsilon"
    # checkpoints and validation
    checkpointing_steps: int = 0
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_steps: int = 0
    validation_samples: int = 4
    validation_inference_steps: int = 20
    seed: int = 0
    num_workers: int = 0
    adapter_name: str = "condition"
    # hard / feedback fine-tuning
    lambda_: float = 1.0
    margin_factor: float = 1.5
    #: fixed margin for every backbone (or the segmenter), e.g. the paper's 50 for ViT-L; None = calibrate
    margin: float | None = None
    crop_pad: int = 10
    calibration_batches: int = 2
    backbones: dict[str, dict[str, Any]] = field(default_factory=dict)
    prototypes: dict[str, str] = field(default_factory=dict)
    # feedback: the fixed real-trained segmenter (a segment.SegmenterSpec as a dict) and its weights
    segmenter: dict[str, Any] | None = None
    segmenter_weights: str | None = None
    segment_size: int = 352

    def validate(self) -> None:
        """Raise ValueError naming the offending key when a setting is out of range or inconsistent."""

        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"TrainSettings.{key}: {why} (got {getattr(self, key)!r})")

        choices = {
            "mode": MODES,
            "family": FAMILIES,
            "mixed_precision": MIXED_PRECISIONS,
            "prediction_type": PREDICTION_TYPES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"must be one of {allowed}")
        if self.resolution <= 0 or self.resolution % 8:
            raise bad("resolution", "must be a positive multiple of 8")
        for key in ("steps", "batch_size", "gradient_accumulation_steps", "rank", "conv_in_rank"):
            if int(getattr(self, key)) < 1:
                raise bad(key, "must be >= 1")
        for key in ("lr_warmup_steps", "checkpointing_steps", "validation_steps", "num_workers", "crop_pad",
                    "validation_samples", "validation_inference_steps"):
            if int(getattr(self, key)) < 0:
                raise bad(key, "must be >= 0")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "must be > 0")
        if not self.loraplus_lr_ratio > 0:
            raise bad("loraplus_lr_ratio", "must be > 0")
        if not 0.0 <= self.empty_prompt_prob <= 1.0:
            raise bad("empty_prompt_prob", "must be in [0, 1]")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise bad("checkpoints_total_limit", "must be >= 1 or null")
        if self.mode == "plain":
            return
        if not self.init_lora:
            raise bad("init_lora", f"mode={self.mode!r} fine-tunes a plain LoRA; give its path")
        if not Path(self.init_lora).exists():
            raise bad("init_lora", "file or folder not found")
        if self.calibration_batches < 1:
            raise bad("calibration_batches", "must be >= 1")
        if not self.margin_factor > 0:
            raise bad("margin_factor", "must be > 0")
        if self.margin is not None and not self.margin > 0:
            raise bad("margin", "must be > 0 or null (calibrate from margin_factor)")
        if self.lambda_ < 0:
            raise bad("lambda_", "must be >= 0")
        if self.mode == "hard":
            if not self.backbones:
                raise bad("backbones", "hard mode needs at least one backbone")
            if set(self.backbones) != set(self.prototypes):
                raise bad("prototypes", f"keys must match backbones {sorted(self.backbones)}")
            for key, path in self.prototypes.items():
                if not Path(path).is_file():
                    raise ValueError(f"TrainSettings.prototypes[{key!r}]: {path} not found")
        if self.mode == "feedback":
            if not self.segmenter:
                raise bad("segmenter", "feedback mode needs a segmenter spec")
            if not self.segmenter_weights or not Path(self.segmenter_weights).is_file():
                raise bad("segmenter_weights", "feedback mode needs the real-trained segmenter's weight file")
            if self.segment_size <= 0 or self.segment_size % 32:
                raise bad("segment_size", "must be a positive multiple of 32 (smp encoders downsample by 32)")

    def to_json(self, path: str | Path) -> None:
        """Write the settings as JSON, atomically."""
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings") -> TrainSettings:
        """Build settings from a mapping; unknown or missing keys raise ValueError naming ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown TrainSettings keys {unknown}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in values]
        if missing:
            raise ValueError(f"{source}: missing required TrainSettings keys {missing}")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainSettings:
        """Read settings written by :meth:`to_json`."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read TrainSettings JSON ({err})") from err
        if not isinstance(values, dict):
            raise ValueError(f"{path}: TrainSettings JSON must be an object")
        return cls.from_dict(values, source=str(path))


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
    """The feedback term ``mean max(0, m − ℓ_seg)²`` over per-sample segmenter losses (B,)."""
    if segmentation_losses.ndim != 1:
        raise ValueError(f"feedback_loss: expected per-sample losses (B,), got {tuple(segmentation_losses.shape)}")
    return squared_hinge(segmentation_losses, margin)


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


def lora_param_groups(model: torch.nn.Module, learning_rate: float, loraplus_lr_ratio: float = 1.0) -> list[dict]:
    """Optimizer parameter groups for the trainable (LoRA) parameters.

    LoRA+ (Hayou et al.): ``lora_B`` matrices learn ``loraplus_lr_ratio`` times faster than the rest.
    With a ratio of 1 there is a single group.
    """
    a_params, b_params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (b_params if "lora_B" in name else a_params).append(param)
    if not a_params and not b_params:
        raise ValueError("lora_param_groups: the model has no trainable parameters")
    if loraplus_lr_ratio == 1.0:
        return [{"params": a_params + b_params, "lr": learning_rate}]
    return [
        {"params": a_params, "lr": learning_rate},
        {"params": b_params, "lr": learning_rate * loraplus_lr_ratio},
    ]


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def load_training_pairs(conditions_csv: str | Path, manifest_csv: str | Path) -> pd.DataFrame:
    """Real training rows as a table (sample_id, image, condition, mask) with resolved paths.

    ``conditions_csv`` rows with ``kind == "real"`` are joined to the manifest on source_id == id.
    """
    conditions_csv, manifest_csv = Path(conditions_csv), Path(manifest_csv)
    for table in (conditions_csv, manifest_csv):
        if not table.is_file():
            raise DataError(f"{table}: table not found")
    conditions = pd.read_csv(conditions_csv)
    manifest = pd.read_csv(manifest_csv)
    for table, frame, cols in ((conditions_csv, conditions, {"sample_id", "source_id", "kind", "condition", "mask"}),
                               (manifest_csv, manifest, {"id", "image"})):
        missing = sorted(cols - set(frame.columns))
        if missing:
            raise DataError(f"{table}: missing columns {missing}")
    real = conditions[conditions["kind"] == "real"]
    if real.empty:
        raise DataError(f"{conditions_csv}: no rows with kind == 'real'")
    merged = real.merge(manifest[["id", "image"]].astype({"id": str}),
                        left_on=real["source_id"].astype(str), right_on="id", how="left")
    unmatched = merged[merged["image"].isna()]
    if not unmatched.empty:
        raise DataError(f"{conditions_csv}: source_id {unmatched['source_id'].iloc[0]!r} not in {manifest_csv}")
    rows = pd.DataFrame({
        "sample_id": merged["sample_id"].astype(str),
        "image": [resolve_table_path(p, manifest_csv, "image") for p in merged["image"]],
        "condition": [resolve_table_path(p, conditions_csv, "condition") for p in merged["condition"]],
        "mask": [resolve_table_path(p, conditions_csv, "mask") for p in merged["mask"]],
    })
    return rows.sort_values("sample_id", kind="stable").reset_index(drop=True)


class PairDataset(torch.utils.data.Dataset):
    """Real image, its condition image (both in [-1, 1], 3×R×R) and its mask (1×R×R in {0, 1})."""

    def __init__(self, pairs: pd.DataFrame, resolution: int) -> None:
        self.pairs = pairs
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.pairs)

    def _rgb(self, path: Path) -> torch.Tensor:
        size = (self.resolution, self.resolution)
        array = cv2.resize(read_rgb(path), size, interpolation=cv2.INTER_LINEAR)
        return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.pairs.iloc[index]
        size = (self.resolution, self.resolution)
        # nearest keeps the mask binary; crops only need its box
        mask = cv2.resize(read_mask(row["mask"]).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        return {
            "pixels": self._rgb(row["image"]),
            "condition": self._rgb(row["condition"]),
            "mask": torch.from_numpy(mask).float()[None],
            "index": torch.tensor(index),
        }


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    """An endless, seeded stream of batches that can start at any micro-step.

    The sample stream is the concatenation of per-epoch permutations (epoch e uses ``seed + e``);
    micro-batch k of process p takes stream positions ``[(k·P + p)·B, (k·P + p + 1)·B)``. The order is
    therefore a pure function of (seed, k), so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, start_micro_step: int = 0,
                 num_processes: int = 1, process_index: int = 0) -> None:
        if n_items < 1:
            raise ValueError("ResumableBatchSampler: empty dataset")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start, self.num_processes, self.process_index = start_micro_step, num_processes, process_index

    def _epoch(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n_items, generator=torch.Generator().manual_seed(self.seed + epoch))

    def batch(self, micro_step: int) -> list[int]:
        """The indices of one micro-batch for this process."""
        first = (micro_step * self.num_processes + self.process_index) * self.batch_size
        out: list[int] = []
        cached: dict[int, torch.Tensor] = {}
        for pos in range(first, first + self.batch_size):
            epoch = pos // self.n_items
            if epoch not in cached:
                cached[epoch] = self._epoch(epoch)
            out.append(int(cached[epoch][pos % self.n_items]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.start
        while True:
            yield self.batch(micro)
            micro += 1


def _loader(dataset: PairDataset, sampler: ResumableBatchSampler, num_workers: int, seed: int) -> Iterator[dict]:
    # A private generator keeps DataLoader's worker seeding off the global RNG, which accelerate
    # checkpoints; otherwise creating the iterator after a resume would shift the random stream.
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed),
                                         persistent_workers=False)
    return iter(loader)


# --------------------------------------------------------------------------------------------------
# Text conditioning
# --------------------------------------------------------------------------------------------------


@dataclass
class PromptEmbeddings:
    """Frozen text conditioning for the prompt and the empty prompt (dropped with empty_prompt_prob)."""

    prompt: torch.Tensor  # (1, L, C)
    empty: torch.Tensor
    pooled_prompt: torch.Tensor | None = None  # SDXL only, (1, C2)
    pooled_empty: torch.Tensor | None = None


def _tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    return tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompts(components: dict[str, Any], prompt: str, family: str, device: torch.device) -> PromptEmbeddings:
    """Encode the prompt and "" once; the text encoders are frozen so this is exact and cheap."""

    def sd15(text: str) -> tuple[torch.Tensor, None]:
        ids = _tokenize(components["tokenizer"], text).to(device)
        return components["text_encoder"](ids).last_hidden_state, None

    def sdxl(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        # SDXL conditions on the penultimate hidden states of both encoders, plus the pooled
        # (projected) embedding of the second one.
        hidden = []
        pooled = None
        for enc_key, tok_key in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            out = components[enc_key](_tokenize(components[tok_key], text).to(device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if enc_key == "text_encoder_2":
                pooled = out.text_embeds
        return torch.cat(hidden, dim=-1), pooled

    encode = sdxl if family == "sdxl" else sd15
    prompt_h, prompt_p = encode(prompt)
    empty_h, empty_p = encode("")
    return PromptEmbeddings(prompt_h, empty_h, prompt_p, empty_p)


# --------------------------------------------------------------------------------------------------
# Hardness / feedback judges
# --------------------------------------------------------------------------------------------------


class HardnessJudge:
    """Frozen backbones + prototypes: per-backbone distances and the averaged L_dis."""

    def __init__(self, settings: TrainSettings, device: torch.device) -> None:
        from hardgen import features

        self.pad = settings.crop_pad
        self.backbones: dict[str, torch.nn.Module] = {}
        self.prototypes: dict[str, torch.Tensor] = {}
        self.sizes: dict[str, int] = {}
        for key, entry in sorted(settings.backbones.items()):
            spec = features.BackboneSpec.from_config(key, entry)
            self.backbones[key] = features.load_backbone(spec, device, config_key=key)
            proto = features.load_prototype(settings.prototypes[key])
            if proto.backbone != spec.name:
                raise ValueError(f"TrainSettings.prototypes[{key!r}]: {settings.prototypes[key]} was computed "
                                 f"with {proto.backbone!r}, but backbones.{key} is {spec.name!r}")
            self.prototypes[key] = proto.prototype.to(device)
            self.sizes[key] = spec.input_size

    def features(self, images01: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features (B, D) of the mask-box crops, differentiable wrt the images."""
        from hardgen import features

        out = {}
        for key, backbone in self.backbones.items():
            crops = features.crop_to_mask(images01, masks, self.pad, self.sizes[key])
            out[key] = backbone(crops).float()
        return out

    def distances(self, images01: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """‖f − p‖₂ per sample (B,) for every backbone."""
        from hardgen import features

        return {key: features.prototype_distance(f, self.prototypes[key])
                for key, f in self.features(images01, masks).items()}

    def loss(self, images01: torch.Tensor, masks: torch.Tensor,
             margins: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over backbones of L_dis, and the fraction of samples with a positive total L_dis."""
        from hardgen import features as features_mod

        terms, any_active = [], None
        for key, feats in self.features(images01, masks).items():
            distances = features_mod.prototype_distance(feats, self.prototypes[key])
            gap = torch.clamp(margins[key] - distances, min=0.0)
            terms.append((gap**2).mean())
            any_active = gap > 0 if any_active is None else any_active | (gap > 0)
        return torch.stack(terms).mean(), any_active.float().mean()


class FeedbackJudge:
    """A fixed real-trained segmenter; per-sample structure loss of its prediction on x̂0."""

    def __init__(self, settings: TrainSettings, device: torch.device) -> None:
        from hardgen import segment

        self.segment = segment
        spec = segment.SegmenterSpec.from_config(dict(settings.segmenter or {}), "feedback.segmenter")
        self.model = segment.load_segmenter(spec, settings.segmenter_weights, device, config_key="feedback.segmenter")
        self.model.requires_grad_(False)
        self.size = settings.segment_size
        self.mean = torch.tensor(segment.IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(segment.IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def losses(self, images01: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Structure loss per sample (B,), differentiable wrt the images."""
        size = (self.size, self.size)
        x = F.interpolate(images01.float(), size=size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        target = F.interpolate(masks.float(), size=size, mode="nearest")
        return self.segment.structure_loss_per_sample(self.model(x), target)

    def loss(self, images01: torch.Tensor, masks: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        return feedback_loss(self.losses(images01, masks), margin)


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


@dataclass
class StepLosses:
    total: torch.Tensor
    mse: torch.Tensor
    extra: torch.Tensor
    active_fraction: torch.Tensor


def _ranks_of(state: dict[str, torch.Tensor], origin: str) -> tuple[int, int]:
    """(rank, conv_in rank) of a control-lora-v3 state dict in peft key form."""
    conv_in = state.get("conv_in.lora_A.weight")
    others = [v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight") and k != "conv_in.lora_A.weight"]
    if conv_in is None or not others:
        raise ValueError(f"{origin}: not a Control-LoRA (needs conv_in and at least one other LoRA layer)")
    return int(others[0]), int(conv_in.shape[0])


def assign_lora_weights(unet: torch.nn.Module, state: dict[str, torch.Tensor], adapter_name: str,
                        origin: str) -> None:
    """Copy LoRA weights (peft keys, as from ``control_lora.read_control_lora``) into an existing adapter.

    Used to resume and to start fine-tuning: the adapter keeps its optimizer-registered parameters,
    only their values change. A PiSSA adapter saved in doubled-rank form takes the first half (the
    trained factors), as control-lora-v3 does. Mismatched modules or shapes raise naming ``origin``.
    """
    from hardgen.control_lora import pissa_initial_factors

    pissa = bool(pissa_initial_factors(unet, adapter_name))
    params = {}
    for name, param in unet.named_parameters():
        for part in (".lora_A.", ".lora_B."):
            tail = f"{part}{adapter_name}.weight"
            if name.endswith(tail):
                params[name[: -len(tail)] + f"{part}weight"] = param
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"{origin}: LoRA layout differs from the adapter (preset?): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    with torch.no_grad():
        for key, param in params.items():
            value = state[key]
            if pissa and value.shape != param.shape:
                value = value[: param.shape[0]] if ".lora_A." in key else value[:, : param.shape[1]]
            if value.shape != param.shape:
                raise ValueError(f"{origin}: {key} has shape {tuple(value.shape)}, adapter expects "
                                 f"{tuple(param.shape)} (rank / conv_in_rank?)")
            param.copy_(value.to(param.dtype))


def _to(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a model, casting only when the dtype really changes (diffusers warns on no-op casts)."""
    model.to(device)
    if next(model.parameters()).dtype != dtype:
        model.to(dtype=dtype)


class _Trainer:
    """Holds the models and state of one run; :func:`train_control_lora` drives it."""

    def __init__(self, settings: TrainSettings) -> None:
        from hardgen import base_model, control_lora

        self.settings = s = settings
        self.control_lora = control_lora
        self.out_dir = Path(s.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.accelerator = Accelerator(
            gradient_accumulation_steps=s.gradient_accumulation_steps,
            mixed_precision=s.mixed_precision,
            project_config=ProjectConfiguration(project_dir=str(self.out_dir)),
        )
        acc = self.accelerator
        # device_specific: each process draws its own noise; still reproducible per process.
        set_seed(s.seed, device_specific=True)
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[s.mixed_precision]

        components = base_model.load_components(s.base, family=s.family, dtype=torch.float32)
        self.vae = components["vae"]
        self.unet = components["unet"]
        self.noise_scheduler = components["noise_scheduler"]
        self.noise_scheduler.register_to_config(prediction_type=s.prediction_type)
        for key in ("vae", "unet", "text_encoder", "text_encoder_2"):
            if components.get(key) is not None:
                components[key].requires_grad_(False)

        # The SDXL VAE overflows in fp16, so it stays fp32 there (the condition is encoded with it). In hard /
        # feedback mode the VAE also *decodes* x̂0 with gradients, where fp16 overflows first (x̂0 is far out of
        # range at high t): a VAE whose config asks for upcasting (SD1.5's does) then decodes in fp32.
        self.decode_in_fp32 = (
            self.weight_dtype == torch.float16 and s.mode != "plain" and bool(self.vae.config.get("force_upcast", True))
        )
        fp32_vae = self.weight_dtype == torch.float16 and (s.family == "sdxl" or self.decode_in_fp32)
        if self.decode_in_fp32:
            logger.info("fp16 training: the VAE decodes x̂0 in fp32 (vae.config.force_upcast)")
        vae_dtype = torch.float32 if fp32_vae else self.weight_dtype
        _to(self.vae, acc.device, vae_dtype)
        for key in ("text_encoder", "text_encoder_2"):
            if components.get(key) is not None:
                _to(components[key], acc.device, self.weight_dtype)
        self.prompts = encode_prompts(components, s.prompt, s.family, acc.device)
        for key in ("text_encoder", "text_encoder_2"):
            components.pop(key, None)  # cached embeddings are all we need

        control_lora.widen_conv_in(self.unet, num_conditions=1)
        _to(self.unet, acc.device, self.weight_dtype)
        if s.init_lora:
            # Fine-tuning continues the given LoRA exactly: its own ranks, gaussian-shaped adapter (the
            # base weights must stay the original ones), then its weights copied in.
            init_state = control_lora.read_control_lora(s.init_lora)
            rank, conv_in_rank = _ranks_of(init_state, s.init_lora)
            if (rank, conv_in_rank) != (s.rank, s.conv_in_rank):
                logger.info("init_lora %s has rank %d / conv_in rank %d; using those", s.init_lora, rank, conv_in_rank)
            control_lora.add_control_lora(self.unet, s.adapter_name, preset=s.preset, rank=rank,
                                          conv_in_rank=conv_in_rank, init="gaussian")
            assign_lora_weights(self.unet, init_state, s.adapter_name, origin=f"TrainSettings.init_lora {s.init_lora}")
        else:
            control_lora.add_control_lora(self.unet, s.adapter_name, preset=s.preset, rank=s.rank,
                                          conv_in_rank=s.conv_in_rank, init=s.lora_init)
        if self.weight_dtype != torch.float32:
            # fp32 master weights for the LoRA (the frozen base stays in weight_dtype; autocast does the
            # compute): in fp16 small updates underflow, and in bf16 (8-bit mantissa) an Adam step of ~lr is
            # below half an ulp of most LoRA weights, so at SD1.5's lr 1e-4 ~3/4 of lora_A never moved.
            cast_training_params(self.unet, dtype=torch.float32)
        if s.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if s.mode != "plain":
                # decoding x̂0 with gradients is the dominant activation cost at 512 px
                self.vae.enable_gradient_checkpointing()
        self.unet.train()

        self.pairs = load_training_pairs(s.conditions_csv, s.manifest_csv)
        self.dataset = PairDataset(self.pairs, s.resolution)

        self.judge: HardnessJudge | FeedbackJudge | None = None
        if s.mode == "hard":
            self.judge = HardnessJudge(s, acc.device)
        elif s.mode == "feedback":
            self.judge = FeedbackJudge(s, acc.device)
        self.margins: dict[str, float] = {}

        self.optimizer = self._optimizer()
        self.lr_scheduler = get_scheduler(
            s.lr_scheduler, optimizer=self.optimizer,
            # accelerate steps a prepared scheduler once per process
            num_warmup_steps=s.lr_warmup_steps * acc.num_processes,
            num_training_steps=s.steps * acc.num_processes,
        )
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(self.unet, self.optimizer, self.lr_scheduler)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(acc.device)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.log_rows: list[dict[str, float]] = []
        self.global_step = 0

    # -- optimiser -------------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        groups = lora_param_groups(self.unet, s.learning_rate, s.loraplus_lr_ratio)
        if s.use_8bit_adam:
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ImportError("TrainSettings.use_8bit_adam: bitsandbytes is not installed") from err
            return bnb.optim.AdamW8bit(groups, lr=s.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        return torch.optim.AdamW(groups, lr=s.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    # -- accelerate checkpoint hooks: the model part of a checkpoint is the public LoRA file ------
    def _save_hook(self, models: list, weights: list, output_dir: str) -> None:
        if self.accelerator.is_main_process:
            for model in models:
                self.control_lora.save_control_lora(output_dir, self.accelerator.unwrap_model(model),
                                                    self.settings.adapter_name)
        weights.clear()  # nothing else to save for the model: its frozen base is not ours

    def _load_hook(self, models: list, input_dir: str) -> None:
        path = Path(input_dir) / LORA_WEIGHTS_NAME
        state = self.control_lora.read_control_lora(path)
        while models:
            assign_lora_weights(self.accelerator.unwrap_model(models.pop()), state, self.settings.adapter_name,
                                origin=str(path))

    # -- one forward ------------------------------------------------------------------------------
    def _text(self, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        s, p = self.settings, self.prompts
        drop = torch.rand(batch_size, device=self.accelerator.device) < s.empty_prompt_prob
        hidden = torch.where(drop.view(-1, 1, 1), p.empty, p.prompt).to(self.weight_dtype)
        if s.family != "sdxl":
            return hidden, None
        pooled = torch.where(drop.view(-1, 1), p.pooled_empty, p.pooled_prompt).to(self.weight_dtype)
        r = s.resolution
        # (original size, crop top-left, target size): training images are resized, never cropped
        time_ids = torch.tensor([r, r, 0, 0, r, r], device=hidden.device, dtype=self.weight_dtype)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids.repeat(batch_size, 1)}

    def _decode01(self, latents: torch.Tensor) -> torch.Tensor:
        latents = (latents / self.scaling_factor).to(self.vae.dtype)
        if self.decode_in_fp32:  # autocast would run the fp32 VAE's convolutions in fp16 again
            with torch.autocast(device_type=latents.device.type, enabled=False):
                images = self.vae.decode(latents).sample
        else:
            images = self.vae.decode(latents).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def _forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                torch.Tensor]:
        """Noise, predict; returns (model_pred, target, noisy_latents, timesteps)."""
        device = self.accelerator.device
        pixels = batch["pixels"].to(device, dtype=self.vae.dtype)
        condition = batch["condition"].to(device, dtype=self.vae.dtype)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.scaling_factor
            cond_latents = self.control_lora.encode_condition(self.vae, condition, mode="sample")
        latents = latents.to(self.weight_dtype)
        cond_latents = cond_latents.to(self.weight_dtype)
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=device).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        hidden, added = self._text(bsz)
        model_pred = self.unet(torch.cat([noisy, cond_latents], dim=1), timesteps, encoder_hidden_states=hidden,
                               added_cond_kwargs=added).sample
        if self.settings.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return model_pred, target, noisy, timesteps

    def _x0_images(self, model_pred: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        x0 = predict_x0(noisy, model_pred, self.alphas_cumprod[timesteps], self.settings.prediction_type)
        return self._decode01(x0)

    def losses(self, batch: dict[str, torch.Tensor]) -> StepLosses:
        """Total loss = MSE (+ λ · hinge term in hard / feedback mode)."""
        with self.accelerator.autocast():
            model_pred, target, noisy, timesteps = self._forward(batch)
            mse = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            zero = torch.zeros((), device=mse.device)
            if self.judge is None:
                return StepLosses(mse, mse, zero, zero)
            images01 = self._x0_images(model_pred, noisy, timesteps)
            masks = batch["mask"].to(images01.device)
            if isinstance(self.judge, HardnessJudge):
                extra, active = self.judge.loss(images01, masks, self.margins)
            else:
                extra, active = self.judge.loss(images01, masks, self.margins["segmenter"])
        return StepLosses(mse + self.settings.lambda_ * extra, mse, extra.detach(), active)

    # -- margin calibration -----------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self) -> dict[str, float]:
        """Margins = margin_factor × mean distance (or segmenter loss) of the init LoRA's own x̂0."""
        s, acc = self.settings, self.accelerator
        if s.margin is not None:
            keys = list(self.judge.backbones) if isinstance(self.judge, HardnessJudge) else ["segmenter"]
            logger.info("fixed margin %.4g (TrainSettings.margin); no calibration", s.margin)
            return {key: float(s.margin) for key in keys}
        # a separate seeded stream so calibration does not shift the training data order
        sampler = ResumableBatchSampler(len(self.dataset), s.batch_size, s.seed + 7919, 0,
                                        acc.num_processes, acc.process_index)
        batches = _loader(self.dataset, sampler, 0, s.seed)
        sums: dict[str, list[torch.Tensor]] = {}
        for _ in tqdm(range(s.calibration_batches), desc="calibrate margins", disable=not acc.is_local_main_process):
            batch = next(batches)
            with acc.autocast():
                model_pred, _, noisy, timesteps = self._forward(batch)
                images01 = self._x0_images(model_pred, noisy, timesteps)
                masks = batch["mask"].to(images01.device)
                if isinstance(self.judge, HardnessJudge):
                    values = self.judge.distances(images01, masks)
                else:
                    values = {"segmenter": self.judge.losses(images01, masks)}
            for key, v in values.items():
                sums.setdefault(key, []).append(acc.gather(v.float().contiguous()))
        margins = {key: s.margin_factor * float(torch.cat(v).mean()) for key, v in sums.items()}
        for key, m in margins.items():
            if not math.isfinite(m) or m <= 0:
                raise TrainingDivergedError(f"margin calibration for {key!r} gave {m}; the init LoRA "
                                            f"{s.init_lora} produces non-finite or degenerate samples")
        logger.info("calibrated margins (factor %.3g): %s", s.margin_factor, margins)
        return margins


# --------------------------------------------------------------------------------------------------
# Checkpoint folders
# --------------------------------------------------------------------------------------------------


def _checkpoint_step(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders, oldest first (temporary folders are dot-prefixed and skipped)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.iterdir()
             if p.is_dir() and p.name.startswith("checkpoint-") and p.name.split("-", 1)[1].isdigit()
             and (p / TRAINER_STATE_NAME).is_file()]
    return sorted(found, key=_checkpoint_step)


def _resolve_resume(settings: TrainSettings, checkpoint_dir: Path) -> Path | None:
    value = settings.resume_from_checkpoint
    if not value:
        return None
    if value == "latest":
        found = list_checkpoints(checkpoint_dir)
        if not found:
            logger.info("resume_from_checkpoint=latest: no checkpoint in %s, starting fresh", checkpoint_dir)
            return None
        return found[-1]
    path = Path(value)
    if not (path / TRAINER_STATE_NAME).is_file():
        raise ValueError(f"TrainSettings.resume_from_checkpoint: {path} is not a hardgen checkpoint folder")
    return path


def _save_checkpoint(trainer: _Trainer) -> Path:
    """accelerate.save_state into a temporary folder, renamed into place only when complete."""
    acc, s = trainer.accelerator, trainer.settings
    final = trainer.checkpoint_dir / f"checkpoint-{trainer.global_step}"
    tmp = trainer.checkpoint_dir / f".checkpoint-{trainer.global_step}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))  # every process: each saves its own RNG state
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(tmp / TRAINER_STATE_NAME, {"global_step": trainer.global_step, "margins": trainer.margins,
                                              "log": trainer.log_rows})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if s.checkpoints_total_limit is not None:
            for old in list_checkpoints(trainer.checkpoint_dir)[: -s.checkpoints_total_limit]:
                shutil.rmtree(old)
        write_csv(trainer.out_dir / "train_log.csv", pd.DataFrame(trainer.log_rows, columns=LOG_COLUMNS))
    acc.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------------
# Validation grid
# --------------------------------------------------------------------------------------------------


def _validation_grid(trainer: _Trainer, path: Path) -> None:
    """Condition row over sample row for the first ``validation_samples`` training conditions, written to ``path``.

    The pipeline is built around the training UNet and the cached prompt embeddings, so no text
    encoder is kept in memory.
    """
    from diffusers import UniPCMultistepScheduler
    from PIL import Image

    s, p = trainer.settings, trainer.prompts
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    rows = [trainer.dataset[i] for i in range(min(s.validation_samples, len(trainer.dataset)))]
    conditions = [((r["condition"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
                  for r in rows]
    n = len(conditions)
    scheduler = UniPCMultistepScheduler.from_config(trainer.noise_scheduler.config)
    common = dict(vae=trainer.vae, unet=unet, scheduler=scheduler, text_encoder=None, tokenizer=None)
    call: dict[str, Any] = dict(
        condition=[Image.fromarray(c) for c in conditions], prompt_embeds=p.prompt.repeat(n, 1, 1),
        num_inference_steps=s.validation_inference_steps, guidance_scale=1.0, height=s.resolution,
        width=s.resolution, output_type="np",
        generator=torch.Generator(device="cpu").manual_seed(s.seed),
    )
    if s.family == "sdxl":
        pipe = trainer.control_lora.ControlLoraXLPipeline(text_encoder_2=None, tokenizer_2=None, **common)
        call["pooled_prompt_embeds"] = p.pooled_prompt.repeat(n, 1)
    else:
        pipe = trainer.control_lora.ControlLoraPipeline(safety_checker=None, feature_extractor=None,
                                                        requires_safety_checker=False, **common)
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    # fork_rng: validation must not move the global RNG state that checkpoints save and restore
    devices = [trainer.accelerator.device] if trainer.accelerator.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), trainer.accelerator.autocast():
            samples = pipe(**call).images
    finally:
        unet.train(was_training)
    samples = (np.asarray(samples) * 255).round().clip(0, 255).astype(np.uint8)
    grid = np.concatenate([np.concatenate(conditions, axis=1), np.concatenate(list(samples), axis=1)], axis=0)
    write_image(path, grid)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def _check_finite(acc: Accelerator, value: torch.Tensor, what: str, step: int) -> None:
    # gathered so that every process raises together instead of one hanging in a collective
    values = acc.gather(value.detach().float().reshape(1))
    if not torch.isfinite(values).all():
        raise TrainingDivergedError(
            f"non-finite {what} ({values.tolist()}) at optimizer step {step}; no weights written for this state"
        )


def train_control_lora(settings: TrainSettings) -> dict[str, Any]:
    """Train (or fine-tune) a Control-LoRA; returns the summary also written to ``summary.json``.

    Writes under ``settings.out_dir``: ``pytorch_lora_weights.safetensors`` (control-lora-v3 format),
    ``train_log.csv`` (step, loss, mse, extra, active_fraction, lr), ``summary.json``,
    ``validation.png`` and ``checkpoints/checkpoint-N`` every ``checkpointing_steps``.
    """
    settings.validate()
    t_start = time.perf_counter()
    trainer = _Trainer(settings)
    acc, s = trainer.accelerator, settings
    out_dir = trainer.out_dir
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        # a stale final file from an earlier run must never pass for this run's result
        for name in (LORA_WEIGHTS_NAME, "summary.json"):
            (out_dir / name).unlink(missing_ok=True)
    acc.wait_for_everyone()
    timings = {"setup_s": time.perf_counter() - t_start}

    resume = _resolve_resume(s, trainer.checkpoint_dir)
    if resume is not None:
        state = json.loads((resume / TRAINER_STATE_NAME).read_text())
        acc.load_state(str(resume))
        trainer.global_step = int(state["global_step"])
        trainer.margins = {k: float(v) for k, v in state["margins"].items()}
        trainer.log_rows = list(state["log"])
        logger.info("resumed from %s at step %d", resume, trainer.global_step)
    elif trainer.judge is not None:
        t0 = time.perf_counter()
        trainer.margins = trainer.calibrate()
        timings["calibration_s"] = time.perf_counter() - t0

    sampler = ResumableBatchSampler(len(trainer.dataset), s.batch_size, s.seed,
                                    trainer.global_step * s.gradient_accumulation_steps,
                                    acc.num_processes, acc.process_index)
    batches = _loader(trainer.dataset, sampler, s.num_workers, s.seed)
    params = [p for p in trainer.unet.parameters() if p.requires_grad]
    progress = tqdm(range(s.steps), initial=trainer.global_step, desc=f"train {s.mode}",
                    disable=not acc.is_local_main_process)
    t_train = time.perf_counter()
    sums = {"loss": 0.0, "mse": 0.0, "extra": 0.0, "active_fraction": 0.0}
    micro = 0
    while trainer.global_step < s.steps:
        batch = next(batches)
        with acc.accumulate(trainer.unet):
            losses = trainer.losses(batch)
            _check_finite(acc, losses.total, "loss", trainer.global_step + 1)
            acc.backward(losses.total)
            step_lr = trainer.lr_scheduler.get_last_lr()[0]  # the rate this update uses
            if acc.sync_gradients and s.max_grad_norm > 0:
                grad_norm = acc.clip_grad_norm_(params, s.max_grad_norm)
                _check_finite(acc, torch.as_tensor(grad_norm), "gradient norm", trainer.global_step + 1)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        for key, value in (("loss", losses.total), ("mse", losses.mse), ("extra", losses.extra),
                           ("active_fraction", losses.active_fraction)):
            sums[key] += float(acc.reduce(value.detach().float().reshape(1), reduction="mean"))
        micro += 1
        if not acc.sync_gradients:
            continue
        trainer.global_step += 1
        row = {"step": trainer.global_step, **{k: v / micro for k, v in sums.items()},
               "lr": step_lr}
        trainer.log_rows.append(row)
        sums = dict.fromkeys(sums, 0.0)
        micro = 0
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4g}", extra=f"{row['extra']:.3g}")
        if s.checkpointing_steps and trainer.global_step % s.checkpointing_steps == 0:
            _save_checkpoint(trainer)
        if (s.validation_steps and trainer.global_step % s.validation_steps == 0
                and trainer.global_step < s.steps and acc.is_main_process):
            _validation_grid(trainer, out_dir / "validation.png")
    progress.close()
    timings["train_s"] = time.perf_counter() - t_train

    acc.wait_for_everyone()
    summary: dict[str, Any] = {}
    if acc.is_main_process:
        unet = acc.unwrap_model(trainer.unet)
        t0 = time.perf_counter()
        _validation_grid(trainer, out_dir / "validation.png")
        timings["validation_s"] = time.perf_counter() - t0
        write_csv(out_dir / "train_log.csv", pd.DataFrame(trainer.log_rows, columns=LOG_COLUMNS))
        trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
        tail = trainer.log_rows[-min(10, len(trainer.log_rows)):] if trainer.log_rows else []
        timings["total_s"] = time.perf_counter() - t_start
        summary = {
            "settings": dataclasses.asdict(s),
            "mode": s.mode,
            "steps": trainer.global_step,
            "resumed_from": str(resume) if resume is not None else None,
            "margins": trainer.margins,
            "timings": timings,
            "final": {k: float(np.mean([r[k] for r in tail])) if tail else None
                      for k in ("loss", "mse", "extra", "active_fraction")},
            "trainable_parameters": int(trainable),
            "num_training_pairs": len(trainer.dataset),
            "num_processes": acc.num_processes,
            "device": str(acc.device),
            "weights": str(out_dir / LORA_WEIGHTS_NAME),
        }
        # weights last: their presence means the run finished
        write_json(out_dir / "summary.json", summary)
        trainer.control_lora.save_control_lora(out_dir, unet, s.adapter_name)
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hardgen.train --settings FILE.json [--log FILE]`` (also under ``accelerate launch``)."""
    from hardgen.logging_utils import setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True, help="TrainSettings JSON (see TrainSettings.to_json)")
    parser.add_argument("--log", default=None, help="optional log file")
    args = parser.parse_args(argv)
    setup_logging(args.log)
    summary = train_control_lora(TrainSettings.from_json(args.settings))
    if summary:
        logger.info("done: %s", json.dumps(summary.get("final"), default=str))


if __name__ == "__main__":
    main()
