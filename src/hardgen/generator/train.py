"""Control-LoRA training: plain, hardness fine-tuning ("hard") and model-specific feedback ("feedback").

The mechanics follow control-lora-v3 on public diffusers / peft / accelerate APIs: a frozen Stable
Diffusion (SD1.5 or SDXL) whose ``conv_in`` is widened to read the VAE latent of the condition image,
with peft LoRA adapters as the only trainable parameters. The prediction type (epsilon or v) is the
base model's scheduler's, as control-lora-v3 reads it; a config value may only confirm it.

* ``plain``: the denoising MSE on the noise (or velocity).
* ``hard`` (Wan et al.): start from a plain LoRA and add ``λ · L_dis``, a squared hinge that pushes the
  frozen-backbone features of the predicted clean image x̂0 (cropped to the mask box + pad) at least a
  margin away from the real-data prototype. Only the *in-loss* backbones enter it (the paper: ViT-L/16
  alone, unnormalised, absolute margin 50); any other backbone is a held-out judge. With several in-loss
  backbones each term is divided by its margin², so each one moves the samples.
* ``feedback`` (ArSDM-style baseline): start from a plain LoRA and add either ``λ · mean max(0, m − ℓ_seg)²``
  (``hinge``: reward samples on which one fixed real-trained segmenter does badly, up to a bound) or
  ``−λ · mean ℓ_seg`` (``negated``, the authors' unbounded form).

Margins are absolute where configured (per backbone), else ``margin_factor ×`` the init LoRA's mean value on a
fixed *probe grid* (``calibration_samples`` training pairs × timesteps spread evenly over the training
range, fixed noise). The same grid is probed again after training, so ``summary.json`` records whether
the LoRA moved in the intended direction (``probe_init`` → ``probe_final``).

Every random draw of a training sample (timestep, empty-prompt drop, noise, the image's and the condition's posterior
draws) comes from a generator seeded by (seed, the sample's position in the run's global sample stream), and the
stream's order is global too: N processes × batch B and 1 process × N accumulation steps see the same images with
the same draws, so the process count never changes the run (:func:`sample_draws`).

Entry points: :func:`train_control_lora` (a :class:`TrainSettings`), and :func:`main` for
``[accelerate launch] python -m hardgen.generator.train --settings FILE.json``.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from tqdm.auto import tqdm

from hardgen.core.io import write_csv, write_image, write_json
from hardgen.core.layout import VALIDATION_COLUMNS, validation_grid
from hardgen.core.tracking import log_image, tracker_init
from hardgen.data.train_data import (
    PairDataset,
    PromptEmbeddings,
    ResumableBatchSampler,
    encode_prompts,
    load_training_pairs,
    pair_batches,
)
from hardgen.generator.objectives import (
    FeedbackJudge,
    HardnessJudge,
    dissimilarity_loss,
    feedback_loss,
    hardness_loss,
    predict_x0,
    resolve_prediction_type,
    squared_hinge,
)
from hardgen.generator.train_settings import (
    FEEDBACK_LOSSES,
    MIXED_PRECISIONS,
    MODES,
    PREDICTION_TYPES,
    TrainSettings,
)
from hardgen.models.sampling import unit_to_uint8

#: Re-exported: the training API lives here, its parts in train_settings, train_data and objectives.
__all__ = [
    "FEEDBACK_LOSSES", "LOG_COLUMNS", "LORA_WEIGHTS_NAME", "MIXED_PRECISIONS", "MODES",
    "PREDICTION_TYPES", "TRAINER_STATE_NAME", "FeedbackJudge", "HardnessJudge", "PairDataset", "PromptEmbeddings",
    "ResumableBatchSampler", "TrainSettings", "TrainingDivergedError", "dissimilarity_loss",
    "SampleDraws", "encode_prompts", "feedback_loss", "hardness_loss", "list_checkpoints", "load_training_pairs",
    "lora_param_groups", "main", "predict_x0", "resolve_prediction_type", "sample_draws", "sample_generator",
    "squared_hinge", "train_control_lora",
]

logger = logging.getLogger("hardgen.generator.train")

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
#: Extra per-checkpoint state (step, calibrated margins, log so far) written next to accelerate's files.
TRAINER_STATE_NAME = "hardgen_trainer_state.json"
LOG_COLUMNS = ["step", "loss", "mse", "extra", "active_fraction", "lr"]
#: the per-sample generators' streams: training samples (by stream position) and the probe grid (by grid index); the
#: validation set's draw
TRAIN_STREAM, PROBE_STREAM, VALIDATION_STREAM = 0, 1, 2
#: at most this many training pairs (seeded) make the real images' mask-following reference of the validation margin
REFERENCE_PAIRS = 256


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became non-finite; the message names the optimizer step."""


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
# Per-sample random draws
# --------------------------------------------------------------------------------------------------


@dataclass
class SampleDraws:
    """The random inputs of a batch's samples (CPU tensors, batch first); ``None`` eps = the posterior's mode."""

    timesteps: torch.Tensor  # (B,) long
    drop_prompt: torch.Tensor  # (B,) bool: the empty prompt instead of the prompt
    noise: torch.Tensor  # (B, C, h, w)
    image_eps: torch.Tensor | None  # the image latent = mean + std · eps
    condition_eps: torch.Tensor | None  # the condition latent = mean + std · eps


def sample_generator(seed: int, position: int, stream: int = TRAIN_STREAM) -> torch.Generator:
    """A CPU generator of its own for one sample, seeded by a hash of (seed, stream, position)."""
    if seed < 0 or position < 0:
        raise ValueError(f"sample_generator: seed ({seed}) and position ({position}) must be >= 0")
    state = np.random.SeedSequence([seed, stream, position]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def sample_draws(seed: int, positions: Sequence[int], latent_shape: Sequence[int], num_train_timesteps: int,
                 empty_prompt_prob: float, draw_condition: bool) -> SampleDraws:
    """The draws of the training samples at ``positions`` of the run's global sample stream.

    Each sample draws, from :func:`sample_generator` of its position, in this order: its timestep, its empty-prompt
    drop, its noise, its image-posterior eps and (``draw_condition``) its condition-posterior eps. A sample's draws
    depend on (seed, position) alone, never on the batch, process or accumulation step that holds it.
    """
    shape = tuple(latent_shape)
    timesteps, drops, noises, images, conditions = [], [], [], [], []
    for position in positions:
        generator = sample_generator(seed, int(position))
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=generator))
        drops.append(torch.rand(1, generator=generator) < empty_prompt_prob)
        noises.append(torch.randn(shape, generator=generator))
        images.append(torch.randn(shape, generator=generator))
        if draw_condition:
            conditions.append(torch.randn(shape, generator=generator))
    return SampleDraws(torch.cat(timesteps).long(), torch.cat(drops), torch.stack(noises), torch.stack(images),
                       torch.stack(conditions) if draw_condition else None)


# --------------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------------


@dataclass
class StepLosses:
    """A micro-batch's losses: the total, its MSE, the λ-free extra term, the fraction of samples whose hinge is
    active, and each loss term by its tracker name (``l_dis/<backbone>`` per in-loss backbone, ``feedback``)."""

    total: torch.Tensor
    mse: torch.Tensor
    extra: torch.Tensor
    active_fraction: torch.Tensor
    terms: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def _ranks_of(state: dict[str, torch.Tensor], origin: str) -> tuple[int, int]:
    """(rank, conv_in rank) of a control-lora-v3 state dict in peft key form."""
    conv_in = state.get("conv_in.lora_A.weight")
    others = [v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight") and k != "conv_in.lora_A.weight"]
    if conv_in is None or not others:
        raise ValueError(f"{origin}: not a Control-LoRA (needs conv_in and at least one other LoRA layer)")
    return int(others[0]), int(conv_in.shape[0])


def _to(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a model, casting only when the dtype really changes (diffusers warns on no-op casts)."""
    model.to(device)
    if next(model.parameters()).dtype != dtype:
        model.to(dtype=dtype)


class _Trainer:
    """Holds the models and state of one run; :func:`train_control_lora` drives it."""

    def __init__(self, settings: TrainSettings) -> None:
        from hardgen.models import base_model, control_lora
        self.settings = s = settings
        self.control_lora = control_lora
        self.out_dir = Path(s.out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.accelerator = Accelerator(
            gradient_accumulation_steps=s.gradient_accumulation_steps,
            mixed_precision=s.mixed_precision,
            # report_to: accelerate's tracker, logging into the run's folder (hardgen.core.tracking)
            log_with=None if s.report_to == "none" else s.report_to,
            project_config=ProjectConfiguration(project_dir=str(self.out_dir), logging_dir=str(self.out_dir)),
        )
        acc = self.accelerator
        # the same seed in every process (fresh LoRA weights); a sample's draws have generators of their own
        set_seed(s.seed)
        self.weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[s.mixed_precision]

        self._load_models(base_model.load_components(s.base, family=s.family, dtype=torch.float32, vae=s.vae))
        self._add_lora()

        self.pairs = load_training_pairs(s.conditions_csv, s.manifest_csv)
        self.dataset = PairDataset(self.pairs, s.resolution)
        #: per training pair (dataset index): the VAE posterior moments of its image and of its condition. The
        #: encoder is deterministic and the pairs are not augmented, so each pair is encoded once; drawing from
        #: the cached posterior is exactly drawing from a fresh encode.
        self._latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encode_pairs()  # first VAE work of the process, in dataset order: identical in a resumed run
        moments = self._latent_cache[0][0]
        #: a sample's latent shape (C, h, w): the image posterior's moments hold its mean and log-variance
        self.latent_shape = (moments.shape[0] // 2, *moments.shape[1:])

        self.judge: HardnessJudge | FeedbackJudge | None = None
        if s.mode == "hard":
            self.judge = HardnessJudge(s, acc.device)
        elif s.mode == "feedback":
            self.judge = FeedbackJudge(s, acc.device)
        self.margins: dict[str, float] = {}
        self.probe_init: dict[str, float] = {}

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
        #: validation.csv's rows so far (checkpoints keep them: a resumed run continues the curve)
        self.validation_rows: list[dict[str, Any]] = []
        self.global_step = 0
        #: the validation set: dataset indices of seeded training masks, fixed for the run (recorded in summary.json)
        self.validation_indices = validation_indices(len(self.dataset), s.validation_samples, s.seed)
        self._reference = None  # the real images' mask-following reference, computed at the first validation

    # -- setup -------------------------------------------------------------------------------------
    def _load_models(self, components: dict[str, Any]) -> None:
        """Keep the frozen VAE, UNet and noise scheduler of the base's ``components`` on the device in their training
        dtypes, and the prompts' embeddings (the text encoders are dropped once they are encoded)."""
        s, acc = self.settings, self.accelerator
        self.vae = components["vae"]
        self.unet = components["unet"]
        self.noise_scheduler = components["noise_scheduler"]
        self.prediction_type = resolve_prediction_type(self.noise_scheduler.config, s.prediction_type, s.base)
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

    def _add_lora(self) -> None:
        """Widen ``conv_in`` and add the trainable Control-LoRA (fresh, or ``init_lora``'s weights and ranks) with fp32
        master weights; the UNet goes to the device in training mode."""
        s, acc, control_lora = self.settings, self.accelerator, self.control_lora
        control_lora.widen_conv_in(self.unet, num_conditions=1)
        _to(self.unet, acc.device, self.weight_dtype)
        if acc.device.type == "cuda":  # channels-last convolutions are faster on tensor cores (not on CPU)
            self.unet.to(memory_format=torch.channels_last)
        processors = sorted({type(p).__name__ for p in self.unet.attn_processors.values()})
        logger.info("UNet attention processors: %s", processors)  # AttnProcessor2_0 = torch SDPA
        if s.init_lora:
            # Fine-tuning continues the given LoRA exactly: its own ranks, gaussian-shaped adapter (the
            # base weights must stay the original ones), then its weights copied in.
            init_state = control_lora.read_control_lora(s.init_lora)
            rank, conv_in_rank = _ranks_of(init_state, s.init_lora)
            if (rank, conv_in_rank) != (s.rank, s.conv_in_rank):
                logger.info("init_lora %s has rank %d / conv_in rank %d; using those", s.init_lora, rank, conv_in_rank)
            control_lora.add_control_lora(self.unet, s.adapter_name, preset=s.preset, rank=rank,
                                          conv_in_rank=conv_in_rank, init="gaussian")
            control_lora.assign_lora_weights(self.unet, init_state, s.adapter_name,
                                             origin=f"TrainSettings.init_lora {s.init_lora}")
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
                self.save_lora(output_dir, self.accelerator.unwrap_model(model))
        weights.clear()  # nothing else to save for the model: its frozen base is not ours

    def save_lora(self, out_dir: str | Path, unet: torch.nn.Module, model_card: bool = False) -> Path:
        """The LoRA file with hardgen's header metadata (and, for the final weights, a README.md model card)."""
        s = self.settings
        return self.control_lora.save_control_lora(
            out_dir, unet, s.adapter_name, base_model=s.base, preset=s.preset, lora_init=s.lora_init,
            prediction_type=self.prediction_type, condition_type=s.condition_type,
            model_card=model_card, extra={"mode": s.mode, "resolution": s.resolution, "steps": self.global_step},
        )

    def _load_hook(self, models: list, input_dir: str) -> None:
        path = Path(input_dir) / LORA_WEIGHTS_NAME
        state = self.control_lora.read_control_lora(path)
        while models:
            self.control_lora.assign_lora_weights(self.accelerator.unwrap_model(models.pop()), state,
                                                  self.settings.adapter_name, origin=str(path))

    # -- one forward ------------------------------------------------------------------------------
    def _text(self, drop: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """The text conditioning of a batch whose ``drop`` samples get the empty prompt."""
        s, p = self.settings, self.prompts
        batch_size = drop.shape[0]
        drop = drop.to(self.accelerator.device)
        hidden = torch.where(drop.view(-1, 1, 1), p.empty, p.prompt).to(self.weight_dtype)
        if s.family != "sdxl":
            return hidden, None
        pooled = torch.where(drop.view(-1, 1), p.pooled_empty, p.pooled_prompt).to(self.weight_dtype)
        r = s.resolution
        # (original size, crop top-left, target size): training images are resized, never cropped
        time_ids = torch.tensor([r, r, 0, 0, r, r], device=hidden.device, dtype=self.weight_dtype)
        return hidden, {"text_embeds": pooled, "time_ids": time_ids.repeat(batch_size, 1)}

    def draws(self, positions: Sequence[int]) -> SampleDraws:
        """The training draws of the samples at ``positions`` of the global sample stream (:func:`sample_draws`)."""
        s = self.settings
        return sample_draws(s.seed, positions, self.latent_shape, self.noise_scheduler.config.num_train_timesteps,
                            s.empty_prompt_prob, draw_condition=s.condition_latent == "sample")

    def _forward(self, batch: dict[str, torch.Tensor], draws: SampleDraws) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor, torch.Tensor]:
        """Noise, predict; returns (model_pred, target, noisy_latents, timesteps).

        The image latent is its VAE posterior's mean + std · ``draws.image_eps`` (the mode when None), the condition
        latent likewise with ``draws.condition_eps`` (None unless ``condition_latent: sample``: the mode, as sampling
        feeds it); timesteps, noise and the empty-prompt drop are the draws' too. A training step's draws are
        :meth:`draws` of its samples' stream positions; a probe's are fixed (modes, no drop).
        """
        device = self.accelerator.device
        moments, cond_moments = self._encoded(batch)

        def latent(distribution: DiagonalGaussianDistribution, eps: torch.Tensor | None) -> torch.Tensor:
            drawn = distribution.mode() if eps is None else distribution.mean + distribution.std * eps.to(moments)
            return (drawn * self.scaling_factor).to(self.weight_dtype)

        latents = latent(DiagonalGaussianDistribution(moments), draws.image_eps)
        cond_latents = latent(DiagonalGaussianDistribution(cond_moments), draws.condition_eps)
        noise = draws.noise.to(latents)
        timesteps = draws.timesteps.to(device).long()
        hidden, added = self._text(draws.drop_prompt)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        model_pred = self.unet(torch.cat([noisy, cond_latents], dim=1), timesteps, encoder_hidden_states=hidden,
                               added_cond_kwargs=added).sample
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return model_pred, target, noisy, timesteps

    @torch.no_grad()
    def encode_pairs(self) -> None:
        """VAE-encode every training pair once, in dataset order, one pair per call.

        Keeps the posterior moments of the image and of the condition (:meth:`_forward` takes the condition's
        mode, as at inference, or draws from it: ``condition_latent``), so drawing from them is drawing from a
        fresh encode. Always the same calls in the same order from the start of the process, so a resumed run
        holds bit-identical latents (batched, or first-met-mid-run, encodes round differently). Runs outside
        autocast, like the decode: the VAE works in its own dtype (an fp32 VAE really in fp32; the condition's
        encoder runs an fp16 VAE in fp32, :func:`~hardgen.models.control_lora.condition_posterior`). Kept on the
        CPU, moved per batch.
        """
        device = self.accelerator.device
        for index in tqdm(range(len(self.dataset)), desc="encode pairs",
                          disable=not self.accelerator.is_local_main_process):
            item = self.dataset[index]
            pixels = item["pixels"][None].to(device, dtype=self.vae.dtype)
            condition = item["condition"][None].to(device, dtype=self.vae.dtype)
            with torch.autocast(device_type=device.type, enabled=False):
                moments = self.vae.encode(pixels).latent_dist.parameters
                cond_moments = self.control_lora.condition_posterior(self.vae, condition).parameters
            self._latent_cache[index] = (moments[0].cpu(), cond_moments[0].cpu())

    def _encoded(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, condition) posterior moments of the batch's pairs, from the cache :meth:`encode_pairs` fills."""
        device = self.accelerator.device
        indices = [int(i) for i in batch["index"]]
        moments = torch.stack([self._latent_cache[i][0] for i in indices]).to(device)
        cond_moments = torch.stack([self._latent_cache[i][1] for i in indices]).to(device)
        return moments, cond_moments

    def _x0_images(self, model_pred: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The decoded x̂0 in [0, 1]: an fp32-decoding VAE outside autocast (autocast would run its convolutions in
        fp16 again), any other under the training's autocast."""
        x0 = predict_x0(noisy, model_pred, self.alphas_cumprod[timesteps], self.prediction_type)
        return self.control_lora.decode_unit_images(self.vae, x0, keep_autocast=not self.decode_in_fp32)

    def losses(self, batch: dict[str, torch.Tensor], positions: Sequence[int]) -> StepLosses:
        """Total loss = MSE (+ λ · hinge term in hard / feedback mode) of the batch at stream ``positions``."""
        with self.accelerator.autocast():
            model_pred, target, noisy, timesteps = self._forward(batch, self.draws(positions))
            mse = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            zero = torch.zeros((), device=mse.device)
            if self.judge is None:
                return StepLosses(mse, mse, zero, zero)
            images01 = self._x0_images(model_pred, noisy, timesteps)
            masks = batch["mask"].to(images01.device)
            if isinstance(self.judge, HardnessJudge):
                distances = self.judge.distances(images01, masks)
                extra, active = hardness_loss(distances, self.margins)
                terms = {f"l_dis/{key}": squared_hinge(d, self.margins[key])[0].detach()
                         for key, d in distances.items()}
            else:
                extra, active = self.judge.loss(images01, masks, self.margins.get("segmenter"),
                                                self.settings.feedback_loss)
                terms = {"feedback": extra.detach()}
        return StepLosses(mse + self.settings.lambda_ * extra, mse, extra.detach(), active, terms)

    # -- the fixed probe grid: calibration and direction checks ---------------------------------------
    def probe_grid(self) -> list[tuple[list[int], list[int], torch.Tensor]]:
        """This process's share of the fixed grid: (grid indices, dataset indices, timesteps) per micro-batch.

        ``calibration_samples`` samples: sample i takes training pair ``i mod N`` and timestep
        ``round(i · (T−1)/(n−1))`` of a grid spread evenly over the whole training range, paired through a
        fixed permutation so that every image meets several noise levels. The grid depends on the settings
        only, never on the run's random state.
        """
        s, acc = self.settings, self.accelerator
        n, n_items = s.calibration_samples, len(self.dataset)
        last = self.noise_scheduler.config.num_train_timesteps - 1
        grid = torch.linspace(0, last, n).round().long() if n > 1 else torch.tensor([last // 2])
        grid = grid[torch.randperm(n, generator=torch.Generator().manual_seed(s.seed + 7919))]
        mine = list(range(acc.process_index, n, acc.num_processes))
        chunks = []
        for start in range(0, len(mine), s.batch_size):
            ids = mine[start:start + s.batch_size]
            chunks.append((ids, [i % n_items for i in ids], grid[ids]))
        return chunks

    @torch.no_grad()
    def probe(self) -> dict[str, float]:
        """Mean judge value over the fixed grid with the current LoRA: per in-loss backbone the x̂0 distance
        to its prototype (hard), or the judge segmenter's loss on x̂0 (``segmenter``, feedback).

        Fixed images, timesteps and noise (grid sample i's from :func:`sample_generator` (seed, i, the probe stream),
        whichever process probes it): two LoRAs probed with the same settings see exactly the same inputs, so a larger
        value means harder samples, not other noise.
        """
        s, acc = self.settings, self.accelerator
        if self.judge is None:
            raise ValueError("probe: plain mode has no judge")
        values: dict[str, list[torch.Tensor]] = {}
        was_training = self.unet.training
        self.unet.eval()
        try:
            for ids, indices, timesteps in tqdm(self.probe_grid(), desc="probe x̂0",
                                                disable=not acc.is_local_main_process):
                items = [self.dataset[i] for i in indices]
                batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
                noise = torch.stack([torch.randn(self.latent_shape,
                                                 generator=sample_generator(s.seed, i, PROBE_STREAM)) for i in ids])
                draws = SampleDraws(timesteps, torch.zeros(len(ids), dtype=torch.bool), noise, None, None)
                with acc.autocast():
                    model_pred, _, noisy, t = self._forward(batch, draws)
                    images01 = self._x0_images(model_pred, noisy, t)
                    masks = batch["mask"].to(images01.device)
                    if isinstance(self.judge, HardnessJudge):
                        found = self.judge.distances(images01, masks)
                    else:
                        found = {"segmenter": self.judge.losses(images01, masks)}
                for key, v in found.items():
                    values.setdefault(key, []).append(v.float())
        finally:
            self.unet.train(was_training)
        out = {}
        probed = [i for ids, _, _ in self.probe_grid() for i in ids]
        for key, chunks in sorted(values.items()):
            local = torch.cat(chunks)
            # the whole grid in grid order (each value from the one process that probed it; adding zeros is exact),
            # then its mean: the same sum on any process count
            grid = torch.zeros(s.calibration_samples, dtype=local.dtype, device=local.device)
            grid[torch.tensor(probed, device=local.device)] = local
            out[key] = float(acc.reduce(grid, reduction="sum").mean())
        return out

    def calibrate(self, means: dict[str, float]) -> dict[str, float]:
        """Margins: absolute ones from the settings, else margin_factor × the init LoRA's :meth:`probe` mean."""
        s = self.settings
        if isinstance(self.judge, FeedbackJudge) and s.feedback_loss == "negated":
            logger.info("feedback loss 'negated': unbounded, no margin")
            return {}
        keys = list(self.judge.backbones) if isinstance(self.judge, HardnessJudge) else ["segmenter"]
        margins = {key: float(s.margins[key]) if key in s.margins else s.margin_factor * means[key] for key in keys}
        relative = sorted(set(keys) - set(s.margins))
        if relative:
            logger.info("relative margins (factor %.3g × the init LoRA's probe mean) for %s", s.margin_factor, relative)
        for key, m in margins.items():
            if not math.isfinite(m) or m <= 0:
                raise TrainingDivergedError(f"margin calibration for {key!r} gave {m}; the init LoRA "
                                            f"{s.init_lora} produces non-finite or degenerate samples")
        if isinstance(self.judge, HardnessJudge):
            self.judge.check_margins(margins)
        logger.info("margins: %s", margins)
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
                                              "probe_init": trainer.probe_init, "log": trainer.log_rows,
                                              "validation": trainer.validation_rows})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if s.checkpoints_total_limit is not None:
            for old in list_checkpoints(trainer.checkpoint_dir)[: -s.checkpoints_total_limit]:
                shutil.rmtree(old)
        write_csv(trainer.out_dir / "train_log.csv", pd.DataFrame(trainer.log_rows, columns=LOG_COLUMNS))
    acc.wait_for_everyone()
    return final


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validation_indices(n_pairs: int, n_samples: int, seed: int) -> list[int]:
    """The validation set: ``min(n_samples, n_pairs)`` dataset indices drawn without replacement by a generator of
    (seed, the validation stream), sorted; never the training's random state."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, VALIDATION_STREAM]))
    return sorted(int(i) for i in rng.choice(n_pairs, size=min(n_samples, n_pairs), replace=False))


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """A (3, H, W) image in [-1, 1] as RGB uint8 (H, W, 3)."""
    return ((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def _validation_set(trainer: _Trainer) -> tuple[list[np.ndarray], torch.Tensor]:
    """The validation set's conditions (RGB uint8) and masks ((n, 1, H, W) in {0, 1}), each pair read once."""
    items = [trainer.dataset[i] for i in trainer.validation_indices]
    return [_to_uint8(item["condition"]) for item in items], torch.stack([item["mask"] for item in items])


def _sample(trainer: _Trainer, conditions: Sequence[np.ndarray]) -> np.ndarray:
    """One sample of each condition (RGB uint8) with the current LoRA (float in [0, 1], (n, H, W, 3)): the
    validation inference steps of UniPC, noise seeded by the run's seed alone, so every validation step samples the
    same noise and the change is the LoRA's.

    The pipeline is built around the training UNet and the cached prompt embeddings, so no text encoder is kept in
    memory. fork_rng: sampling never moves the global RNG state that checkpoints save and restore.
    """
    from diffusers import UniPCMultistepScheduler
    from PIL import Image

    s, p = trainer.settings, trainer.prompts
    unet = trainer.accelerator.unwrap_model(trainer.unet)
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
    # autocast is for the UNet (fp16/bf16 base, fp32 LoRA); the pipeline VAE-encodes and decodes outside it, as
    # training does
    devices = [trainer.accelerator.device] if trainer.accelerator.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), trainer.accelerator.autocast():
            samples = pipe(**call).images
    finally:
        unet.train(was_training)
    return np.asarray(samples, dtype=np.float32)


def _grid(conditions: Sequence[np.ndarray], images: np.ndarray) -> np.ndarray:
    """Condition row over sample row, RGB uint8."""
    return np.concatenate([np.concatenate(list(conditions), axis=1), np.concatenate(list(images), axis=1)], axis=0)


def _validation_grid(trainer: _Trainer, path: Path) -> None:
    """The end-of-run grid alone (``validation_steps: 0``): the validation set's conditions over their samples."""
    conditions, _ = _validation_set(trainer)
    write_image(path, _grid(conditions, unit_to_uint8(_sample(trainer, conditions))))


def _reference(trainer: _Trainer):
    """The real images' mask-following reference (at most :data:`REFERENCE_PAIRS` seeded training pairs, their
    crops at the training resolution, as the LoRA sees them), computed once."""
    from hardgen.scoring.mask_following import real_reference

    if trainer._reference is None:
        # every pair where the training set has at most REFERENCE_PAIRS
        items = [trainer.dataset[i] for i in validation_indices(len(trainer.dataset), REFERENCE_PAIRS,
                                                                 trainer.settings.seed)]
        trainer._reference = real_reference(([_to_uint8(item["pixels"]) for item in items],
                                             [item["mask"][0].numpy() > 0.5 for item in items]),
                                            seed=trainer.settings.seed)
        if trainer._reference.reason:
            logger.warning("validation: the mask-following margin is undefined: %s", trainer._reference.reason)
    return trainer._reference


@torch.no_grad()
def _validation_metrics(trainer: _Trainer, samples: np.ndarray, images: np.ndarray,
                        masks: torch.Tensor) -> dict[str, float]:
    """The validation set's metrics from its ``samples`` (float in [0, 1]), the same as uint8 ``images`` and its
    ``masks`` (:func:`_validation_set`): the mask-following margin against the real images' (every stage), the mean
    distance of the samples to each in-loss prototype (hard) and the judge's mean loss on them (feedback)."""
    from hardgen.scoring.mask_following import margin_vs_reference

    margin, why = margin_vs_reference(_reference(trainer), images, [m[0].numpy() > 0.5 for m in masks],
                                      seed=trainer.settings.seed)
    if why and trainer.global_step == 0:
        logger.info("validation: mask-following margin undefined on the validation set: %s", why)
    metrics = {"mask_following_margin": margin}
    if trainer.judge is None:
        return metrics
    device = trainer.accelerator.device
    images01 = torch.from_numpy(samples).permute(0, 3, 1, 2).to(device)
    mask_batch = masks.to(device)
    if isinstance(trainer.judge, HardnessJudge):
        for key, values in trainer.judge.distances(images01, mask_batch).items():
            metrics[f"prototype_distance/{key}"] = float(values.mean())
    else:
        metrics["judge_loss"] = float(trainer.judge.losses(images01, mask_batch).mean())
    return metrics


def _validate(trainer: _Trainer) -> Path:
    """Main process: sample the validation set at the current step, write its grid (``validation/step-N.png``) and
    ``validation.csv``, send both to the tracker; returns the grid's path."""
    acc, s, step = trainer.accelerator, trainer.settings, trainer.global_step
    conditions, masks = _validation_set(trainer)
    samples = _sample(trainer, conditions)
    images = unit_to_uint8(samples)  # the grid's and the margin's pixels
    grid = _grid(conditions, images)
    path = validation_grid(trainer.out_dir, step)
    write_image(path, grid)
    metrics = _validation_metrics(trainer, samples, images, masks)
    trainer.validation_rows += [{"stage": s.mode, "step": step, "metric": name, "value": value}
                                for name, value in metrics.items()]
    write_csv(trainer.out_dir / "validation.csv", pd.DataFrame(trainer.validation_rows, columns=list(VALIDATION_COLUMNS)))
    if acc.trackers:
        acc.log({f"validation/{name}": value for name, value in metrics.items()}, step=step)
        for tracker in acc.trackers:
            log_image(tracker, "validation/grid", grid, step, path)
    return path


def _validation_due(settings: TrainSettings, step: int) -> bool:
    """Whether a run validates at ``step``: step 0, every ``validation_steps`` and the last step (never with 0)."""
    every = settings.validation_steps
    return bool(every) and (step % every == 0 or step == settings.steps)


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
    ``train_log.csv`` (step, loss, mse, extra, active_fraction, lr), ``summary.json``, ``validation.png`` (the last
    step's grid), ``validation.csv`` (:data:`hardgen.core.layout.VALIDATION_COLUMNS`; no rows with ``validation_steps`` 0) with each
    validation's grid in ``validation/step-N.png``, the tracker's files (``report_to`` tensorboard: ``tensorboard/``)
    and ``checkpoints/checkpoint-N`` every ``checkpointing_steps``. Validation samples under ``fork_rng`` and its set
    is drawn by a generator of its own, so the weights are the same with any ``validation_steps``.
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
        _resume(trainer, resume)
    elif trainer.judge is not None:
        t0 = time.perf_counter()
        trainer.probe_init = trainer.probe()
        logger.info("init LoRA on the %d-sample probe grid: %s", s.calibration_samples, trainer.probe_init)
        trainer.margins = trainer.calibrate(trainer.probe_init)
        timings["calibration_s"] = time.perf_counter() - t0

    _init_trackers(trainer)
    validation = {"seconds": 0.0, "steps": []}
    if acc.is_main_process and trainer.global_step == 0 and _validation_due(s, 0):
        _timed_validation(trainer, validation, step_s=None)
    timings["train_s"], step_s = _train_steps(trainer, validation)
    if acc.is_main_process and _validation_due(s, trainer.global_step) and not any(
            row["step"] == trainer.global_step for row in trainer.validation_rows):
        _timed_validation(trainer, validation, step_s or None)  # resumed at the last step from a checkpoint without it
    timings["validation_s"] = validation["seconds"]
    if s.validation_steps and acc.is_main_process:
        logger.info("validation: %d runs at steps %s, %.1f s in all = %.1f %% of the %.1f s of training steps "
                    "(one validation ≈ %.1f training steps)", len(validation["steps"]), validation["steps"],
                    validation["seconds"], 100 * validation["seconds"] / max(timings["train_s"], 1e-9),
                    timings["train_s"], validation["seconds"] / max(len(validation["steps"]), 1) / max(step_s, 1e-9))

    acc.wait_for_everyone()
    probe_final: dict[str, float] = {}
    if trainer.judge is not None:
        # same grid, noise and timesteps as probe_init: the change is the LoRA's doing
        probe_final = trainer.probe()
        logger.info("probe grid, init -> final LoRA: %s",
                    {k: f"{trainer.probe_init.get(k, float('nan')):.4g} -> {v:.4g}" for k, v in probe_final.items()})
    summary: dict[str, Any] = {}
    if acc.is_main_process:
        summary = _write_results(trainer, resume, probe_final, timings, t_start)
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def _resume(trainer: _Trainer, checkpoint: Path) -> None:
    """Load a checkpoint folder's accelerate state and the trainer's own (step, margins, probe, log so far)."""
    state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    trainer.accelerator.load_state(str(checkpoint))
    trainer.global_step = int(state["global_step"])
    trainer.margins = {k: float(v) for k, v in state["margins"].items()}
    trainer.probe_init = {k: float(v) for k, v in state.get("probe_init", {}).items()}
    trainer.log_rows = list(state["log"])
    # a checkpoint written before validation.csv existed holds no validation rows
    trainer.validation_rows = list(state.get("validation", []))
    logger.info("resumed from %s at step %d", checkpoint, trainer.global_step)


def _init_trackers(trainer: _Trainer) -> None:
    """Start the run's tracker (``report_to``) once its first step is known: a resumed run's curves continue from its
    checkpoint's step (:func:`hardgen.core.tracking.tracker_init`)."""
    s, acc = trainer.settings, trainer.accelerator
    if s.report_to == "none":
        return
    project, init_kwargs = tracker_init(s.report_to, f"lora-{s.mode}", trainer.out_dir,
                                        first_step=trainer.global_step + 1 if trainer.global_step else 0)
    config = None if s.report_to == "tensorboard" else dataclasses.asdict(s)  # summary.json holds them for TensorBoard
    acc.init_trackers(project, config=config, init_kwargs=init_kwargs)


def _timed_validation(trainer: _Trainer, validation: dict[str, Any], step_s: float | None) -> None:
    """:func:`_validate` at the current step, its time added to ``validation`` and logged against ``step_s`` (the
    mean training step's seconds so far; None before the first)."""
    t0 = time.perf_counter()
    _validate(trainer)
    seconds = time.perf_counter() - t0
    validation["seconds"] += seconds
    validation["steps"].append(trainer.global_step)
    against = f" = {seconds / step_s:.1f} training steps of {step_s:.3f} s" if step_s else ""
    logger.info("validation at step %d: %.2f s%s", trainer.global_step, seconds, against)


def _train_steps(trainer: _Trainer, validation: dict[str, Any]) -> tuple[float, float]:
    """Optimizer steps from ``trainer.global_step`` to ``settings.steps``: a log row per step (the micro-batches'
    means over processes) and the tracker's scalars, checkpoints every ``checkpointing_steps``, a validation every
    ``validation_steps`` and at the last step (before that step's checkpoint, which keeps its rows).
    Returns the wall seconds of the steps (validation and checkpoints left out) and of the mean step."""
    acc, s = trainer.accelerator, trainer.settings
    micro_step = trainer.global_step * s.gradient_accumulation_steps
    sampler = ResumableBatchSampler(len(trainer.dataset), s.batch_size, s.seed, micro_step,
                                    acc.num_processes, acc.process_index)
    batches = pair_batches(trainer.dataset, sampler, s.num_workers, s.seed)
    params = [p for p in trainer.unet.parameters() if p.requires_grad]
    progress = tqdm(range(s.steps), initial=trainer.global_step, desc=f"train {s.mode}",
                    disable=not acc.is_local_main_process)
    images_per_step = s.batch_size * s.gradient_accumulation_steps * acc.num_processes
    sums = {"loss": 0.0, "mse": 0.0, "extra": 0.0, "active_fraction": 0.0}
    terms: dict[str, float] = {}
    micro, train_s, steps_run = 0, 0.0, 0
    t_step = time.perf_counter()
    while trainer.global_step < s.steps:
        batch = next(batches)
        positions = sampler.positions(micro_step)  # the batch's places in the global sample stream
        micro_step += 1
        with acc.accumulate(trainer.unet):
            losses = trainer.losses(batch, positions)
            _check_finite(acc, losses.total, "loss", trainer.global_step + 1)
            acc.backward(losses.total)
            step_lr = trainer.lr_scheduler.get_last_lr()[0]  # the rate this update uses
            if acc.sync_gradients:
                # the norm before clipping, of the unscaled gradients (fp16); max_grad_norm 0: no bound, the norm alone
                grad_norm = acc.clip_grad_norm_(params, s.max_grad_norm if s.max_grad_norm > 0 else math.inf)
                _check_finite(acc, torch.as_tensor(grad_norm), "gradient norm", trainer.global_step + 1)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        for key, value in (("loss", losses.total), ("mse", losses.mse), ("extra", losses.extra),
                           ("active_fraction", losses.active_fraction)):
            sums[key] += float(acc.reduce(value.detach().float().reshape(1), reduction="mean"))
        for key, value in losses.terms.items():
            terms[key] = terms.get(key, 0.0) + float(acc.reduce(value.detach().float().reshape(1), reduction="mean"))
        micro += 1
        if not acc.sync_gradients:
            continue
        trainer.global_step += 1
        row = {"step": trainer.global_step, **{k: v / micro for k, v in sums.items()},
               "lr": step_lr}
        trainer.log_rows.append(row)
        seconds = time.perf_counter() - t_step
        train_s, steps_run = train_s + seconds, steps_run + 1
        if acc.trackers:
            acc.log(_step_scalars(trainer, row, {k: v / micro for k, v in terms.items()}, float(grad_norm),
                                  images_per_step / seconds), step=trainer.global_step)
        sums, terms = dict.fromkeys(sums, 0.0), {}
        micro = 0
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.4g}", extra=f"{row['extra']:.3g}")
        if acc.is_main_process and _validation_due(s, trainer.global_step):
            _timed_validation(trainer, validation, train_s / steps_run)
        if s.checkpointing_steps and trainer.global_step % s.checkpointing_steps == 0:
            _save_checkpoint(trainer)
        t_step = time.perf_counter()
    progress.close()
    return train_s, train_s / max(steps_run, 1)


def _step_scalars(trainer: _Trainer, row: dict[str, float], terms: dict[str, float], grad_norm: float,
                  images_per_s: float) -> dict[str, float]:
    """The tracker's scalars of one optimizer step: the loss, its MSE and each loss term (``l_dis/<backbone>``,
    ``feedback``), the fraction of samples whose hinge is active (hard, feedback), the learning rate, the gradient
    norm (before clipping) and the images per second of the step."""
    values = {"train/loss": row["loss"], "train/mse": row["mse"], **{f"train/{k}": v for k, v in terms.items()}}
    if trainer.judge is not None:
        values["train/hinge_active"] = row["active_fraction"]
    values.update({"train/lr": row["lr"], "train/grad_norm": grad_norm, "train/images_per_s": images_per_s})
    return values


def _write_results(trainer: _Trainer, resume: Path | None, probe_final: dict[str, float], timings: dict[str, float],
                   t_start: float) -> dict[str, Any]:
    """Main process: the final validation grid, ``train_log.csv``, ``summary.json`` and, last (their presence means
    the run finished), the LoRA weights with their model card; returns the summary."""
    acc, s, out_dir = trainer.accelerator, trainer.settings, trainer.out_dir
    unet = acc.unwrap_model(trainer.unet)
    if s.validation_steps:
        shutil.copyfile(validation_grid(out_dir, trainer.global_step), out_dir / "validation.png")
    else:
        t0 = time.perf_counter()
        _validation_grid(trainer, out_dir / "validation.png")
        timings["validation_s"] = time.perf_counter() - t0
    write_csv(out_dir / "validation.csv", pd.DataFrame(trainer.validation_rows, columns=list(VALIDATION_COLUMNS)))
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
        "prediction_type": trainer.prediction_type,
        "probe_init": trainer.probe_init,
        "probe_final": probe_final,
        "timings": timings,
        "final": {k: float(np.mean([r[k] for r in tail])) if tail else None
                  for k in ("loss", "mse", "extra", "active_fraction")},
        "validation": {"sample_ids": [str(trainer.pairs.iloc[i]["sample_id"]) for i in trainer.validation_indices],
                       "steps": sorted({int(row["step"]) for row in trainer.validation_rows}),
                       "every": s.validation_steps},
        "trainable_parameters": int(trainable),
        "num_training_pairs": len(trainer.dataset),
        "num_processes": acc.num_processes,
        "device": str(acc.device),
        "weights": str(out_dir / LORA_WEIGHTS_NAME),
    }
    # weights last: their presence means the run finished
    write_json(out_dir / "summary.json", summary)
    trainer.save_lora(out_dir, unet, model_card=True)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hardgen.generator.train --settings FILE.json [--log FILE]`` (also under ``accelerate launch``)."""
    from hardgen.core.logging_utils import setup_logging

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
