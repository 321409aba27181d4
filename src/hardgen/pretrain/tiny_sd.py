"""Pre-train the demo's tiny Stable Diffusion on procedural polyp images (``hardgen pretrain-tiny``, ``make tiny-sd``).

Why: a random-init base decodes coloured noise, so no demo picture can show what hardness does and hardness
effects stay tiny. Stable Diffusion's own recipe, shrunk to the demo: the tiny VAE of ``resources/tiny-sd`` learns
to reconstruct the images (L1 + a small KL, as the SD VAE without its perceptual and adversarial terms), then the
tiny UNet learns the standard DDPM epsilon loss on the VAE's scaled latents, conditioned on the demo prompt and on
the empty prompt (dropped at ``empty_prompt_prob``, so classifier-free guidance works as in SD). The text encoder
stays the ``tiny`` base's random-init, frozen one: one prompt needs no language model, only a fixed embedding.

The images come from the demo's own renderer (:func:`hardgen.data.demo.render_demo_pool`) on a seed stream that the
demo dataset never draws from, in all five test-set styles, at ``model.resolution``. The VAE also sees the
workflow's condition images (canny edges and masks of the same polyps), because Control-LoRA encodes its
condition with this VAE (``control_lora.encode_condition``): the encoder must keep thin edges, not only mucosa.

Everything is seeded: one ``torch.Generator`` per stage draws every batch, crop, noise and timestep, so the same
settings and thread count give bit-identical weights on the CPU. The result is a normal diffusers
``StableDiffusionPipeline`` folder in safetensors with a ``README.md`` model card, written atomically
(:func:`hardgen.models.base_model.save_sd_folder`), and loaded by :func:`hardgen.models.base_model.load_components`
like any base.

Long runs are resumable (:class:`Checkpoints`): every ``checkpoint_minutes`` the stage's model, optimiser, schedule,
generator state, EMA and loss log go to one ``torch.save`` file (tensors and plain values only, read back with
``weights_only=True``) in a folder stamped with the settings and the config folder's digest. A rerun with the same
settings resumes from it and gives bit-identical weights to an uninterrupted run (the checkpoints draw no random
numbers); other settings discard it. The model card records the step budget and the measured wall time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

LOG = logging.getLogger("hardgen.pretrain.tiny_sd")


def bound_problems(settings: Any, *, at_least_one: Sequence[str] = (), positive: Sequence[str] = (),
                   non_negative: Sequence[str] = (), below_one: Sequence[str] = ()) -> list[str]:
    """The numeric fields of ``settings`` out of bounds: ``at_least_one`` (>= 1), ``positive`` (> 0),
    ``non_negative`` (>= 0), ``below_one`` (in [0, 1)); each named as its field."""
    value = {name: getattr(settings, name) for name in (*at_least_one, *positive, *non_negative, *below_one)}
    return ([f"{name} must be >= 1 (got {value[name]})" for name in at_least_one if value[name] < 1]
            + [f"{name} must be > 0 (got {value[name]})" for name in positive if not value[name] > 0]
            + [f"{name} must be >= 0 (got {value[name]})" for name in non_negative if value[name] < 0]
            + [f"{name} must be in [0, 1) (got {value[name]})" for name in below_one if not 0 <= value[name] < 1])


def image_problems(settings: Any) -> list[str]:
    """The demo renderer's settings of every stage out of bounds: ``resolution``, ``min_size``/``max_size``."""
    problems = []
    if settings.resolution < 16 or settings.resolution % 8:
        problems.append(f"resolution must be a multiple of 8 and >= 16 (got {settings.resolution})")
    if not 16 <= settings.min_size <= settings.max_size:
        problems.append(f"min_size/max_size must satisfy 16 <= min <= max (got {settings.min_size}, "
                        f"{settings.max_size})")
    return problems


def prompt_problems(settings: Any) -> list[str]:
    """The text and condition settings of the UNet stages out of bounds: the canny thresholds, the prompt."""
    problems = []
    if not 0 <= settings.canny_low < settings.canny_high <= 255:
        problems.append(f"canny_low/canny_high must satisfy 0 <= low < high <= 255 (got {settings.canny_low}, "
                        f"{settings.canny_high})")
    if not settings.prompt.strip():
        problems.append("prompt must not be empty")
    return problems


def raise_problems(what: str, problems: list[str]) -> None:
    """``ValueError`` listing every one of ``problems`` of the ``what`` settings (none: nothing)."""
    if problems:
        raise ValueError(f"{what} settings:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class PretrainSettings:
    """Every knob of the pre-training; the defaults made the shipped ``resources/tiny-sd-polyp``."""

    seed: int = 0
    #: procedural images in the training pool (each seen several times; rendering costs ~5 ms each)
    images: int = 2000
    #: images of a disjoint stream, never trained on: the held-out reconstruction PSNR in the model card
    heldout: int = 64
    resolution: int = 64  # model.resolution
    min_size: int = 72  # data.demo.min_size / max_size: the demo's raw image sizes, brought to resolution
    max_size: int = 112
    prompt: str = "an endoscopic image of a colon polyp"  # model.prompt
    canny_low: int = 100  # condition.canny_low / canny_high
    canny_high: int = 200
    #: condition images (canny edges, masks) per VAE training image
    condition_share: float = 0.2
    vae_steps: int = 400
    vae_batch: int = 8
    #: side of the random crops the VAE trains on; 0 = whole images (default). Crops are cheaper per image but
    #: the VAE's mid-block attention then sees a quarter of the tokens it sees at full size: 400 steps of 32
    #: crops of 32 px (the same pixels per step as 8 whole 64 px images) reached 24.2 dB held-out PSNR at 64 px
    #: (27.8 dB on 32 px crops) and lost the black endoscope corners; whole images reached 29.1 dB.
    vae_crop: int = 0
    vae_lr: float = 2e-3
    #: per latent element, relative to the per-pixel L1: keeps the posterior near N(0, 1) scale, nothing more
    kl_weight: float = 1e-4
    unet_steps: int = 6000
    unet_batch: int = 16
    unet_lr: float = 1e-3
    warmup_steps: int = 50
    empty_prompt_prob: float = 0.1
    #: EMA of the UNet weights (what is saved): a short run's samples are much cleaner from the average
    ema_decay: float = 0.999
    max_grad_norm: float = 1.0
    threads: int = 2

    def problems(self) -> list[str]:
        """Every invalid setting, named as its field (the CLI flag is the same name with dashes)."""
        problems = bound_problems(
            self, at_least_one=("images", "heldout", "vae_steps", "vae_batch", "unet_steps", "unet_batch", "threads"),
            positive=("vae_lr", "unet_lr", "max_grad_norm"),
            non_negative=("seed", "kl_weight", "condition_share", "warmup_steps"),
            below_one=("empty_prompt_prob", "ema_decay"))
        problems += image_problems(self)
        if self.vae_crop and (not 8 <= self.vae_crop <= self.resolution or self.vae_crop % 8):
            problems.append(f"vae_crop must be 0 (whole images) or a multiple of 8 in [8, resolution] "
                            f"(got {self.vae_crop})")
        return problems + prompt_problems(self)

    def check(self) -> None:
        """Raise ``ValueError`` listing every problem (before any slow work starts)."""
        raise_problems("pretrain", self.problems())


# ------------------------------------------------------------------------------------------------- data
def render_pool(settings: Any, n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """(images ``(n, R, R, 3)`` uint8, masks ``(n, R, R)`` bool) of pool ``stream``
    (:func:`hardgen.data.demo.render_demo_pool` with ``settings.seed`` / ``min_size`` / ``max_size``), brought to
    R = ``settings.resolution`` by :func:`hardgen.core.io.fit_square`, the workflow's one transform. Every pre-training
    (base, decoder, adapter) renders its data here."""
    from hardgen.core.io import fit_square
    from hardgen.data.demo import render_demo_pool

    size = settings.resolution
    pool = render_demo_pool(n, settings.seed, settings.min_size, settings.max_size, stream=stream)
    images = np.stack([fit_square(image, size) for _, image, _ in pool])
    masks = np.stack([fit_square(mask, size, is_mask=True) for _, _, mask in pool])
    return images, masks


def render_training_set(settings: PretrainSettings, n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """(images ``(n, R, R, 3)`` uint8, condition images ``(m, R, R, 3)`` uint8) of pool ``stream`` at resolution R.

    Images and masks come from :func:`render_pool`; the conditions are made from the resized masks by
    :func:`hardgen.data.conditioning.mask_to_condition`, as ``make_conditions`` makes them: canny and mask kinds
    alternating, ``round(n * condition_share)`` of them.
    """
    from hardgen.data.conditioning import mask_to_condition

    images, masks = render_pool(settings, n, stream)
    n_conditions = round(n * settings.condition_share)
    kinds = ("canny", "mask")
    conditions = [mask_to_condition(masks[i], kinds[i % 2], settings.canny_low, settings.canny_high)
                  for i in range(n_conditions)]
    empty = np.zeros((0, settings.resolution, settings.resolution, 3), np.uint8)
    return images, np.stack(conditions) if conditions else empty


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float ``(N, 3, H, W)`` in [-1, 1], as ``train_data.PairDataset`` feeds the VAE."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def reconstructions(vae: torch.nn.Module, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """``decode(encode(x).mode())`` of uint8 ``(N, H, W, 3)`` images: float ``(N, 3, H, W)`` clamped to [-1, 1]."""
    vae.eval()
    return torch.cat([vae.decode(vae.encode(to_model_range(images[start:start + batch]).to(vae.dtype))
                                 .latent_dist.mode()).sample.float().clamp(-1, 1)
                      for start in range(0, len(images), batch)])


def psnr(images: np.ndarray, recon: torch.Tensor) -> np.ndarray:
    """Per-image PSNR (dB, pixels in [0, 1]) of ``recon`` (:func:`reconstructions`) against uint8 ``images``."""
    mse = ((recon - to_model_range(images)) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).numpy()


def reconstruction_psnr(vae: torch.nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Per-image PSNR (dB, pixels in [0, 1]) of ``decode(encode(x).mode())``: how well a VAE keeps an image."""
    return psnr(images, reconstructions(vae, images, batch))


# ------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_NAME = "checkpoint.pt"


class PretrainStopped(Exception):
    """Raised inside the training loops when ``stop_after_steps`` / ``stop_after_minutes`` is reached (after the
    checkpoint is written); :func:`pretrain_tiny_sd` turns it into an incomplete summary."""


class Checkpoints:
    """Periodic, atomic checkpoints of one pre-training run in ``folder`` (one file, the latest state).

    ``fingerprint`` (the settings and the config folder's digest) is stamped on the folder by
    :func:`hardgen.core.io.reset_if_changed`: a checkpoint made under other settings is discarded, never resumed.
    Steps are counted over both stages (VAE steps first, then UNet steps). A checkpoint is written when
    ``every_steps`` (0 = off) or ``minutes`` (0 = off) have passed since the last one, and when a stop condition is
    met (``stop_after_steps`` in this session's steps, or ``stop_after_minutes``), which then raises
    :class:`PretrainStopped`. Saving draws no random numbers, so checkpointing never changes the weights.
    """

    def __init__(self, folder: str | Path, fingerprint: dict[str, Any], *, every_steps: int = 0, minutes: float = 5.0,
                 resume: bool = True, stop_after_steps: int | None = None,
                 stop_after_minutes: float | None = None) -> None:
        from hardgen.core.io import reset_if_changed

        self.folder = Path(folder)
        self.every_steps, self.minutes = every_steps, minutes
        self.stop_after_steps, self.stop_after_minutes = stop_after_steps, stop_after_minutes
        if not resume and self.folder.exists():
            self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kept = reset_if_changed(self.folder, fingerprint)
        self.started = self.last_save = time.monotonic()
        self.session_steps = 0
        self.last_step = -1
        #: values every checkpoint carries besides the stage's own state (held-out PSNR, the finished VAE, ...)
        self.carry: dict[str, Any] = {}
        self.previous_seconds = 0.0

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT_NAME

    def load(self) -> dict[str, Any] | None:
        """The saved state (``weights_only=True``), or None when there is none to resume."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.previous_seconds = float(state["seconds"])
        self.carry = dict(state["carry"])
        LOG.info("resuming pre-training from %s at step %d (%.1f min trained before)", self.path, state["step"],
                 self.previous_seconds / 60)
        return state

    def seconds(self) -> float:
        """Wall seconds of training so far, over every session of this run."""
        return self.previous_seconds + time.monotonic() - self.started

    def tick(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        """After global step ``step`` (1-based): save ``state()`` if one is due; stop if a stop condition is met."""
        from hardgen.core.io import atomic_path

        self.session_steps += 1
        now = time.monotonic()
        stop = ((self.stop_after_steps is not None and self.session_steps >= self.stop_after_steps)
                or (self.stop_after_minutes is not None and now - self.started >= 60 * self.stop_after_minutes))
        due = ((self.every_steps and step % self.every_steps == 0)
               or (self.minutes and now - self.last_save >= 60 * self.minutes))
        if stop or due:
            payload = {**state(), "step": step, "seconds": self.seconds(), "carry": self.carry}
            with atomic_path(self.path) as tmp:
                torch.save(payload, tmp)
            self.last_save, self.last_step = time.monotonic(), step
            LOG.info("checkpoint at step %d: %s", step, self.path)
        if stop:
            raise PretrainStopped(f"stopped after step {step}; rerun the same command to resume from {self.path}")

    def stopped_summary(self, out_dir: str | Path, budget_steps: int) -> dict[str, Any]:
        """A stopped session's summary: incomplete, the last checkpoint's step and path, the wall time so far."""
        return {"out": str(out_dir), "complete": False, "step": self.last_step, "budget_steps": budget_steps,
                "wall_seconds": self.seconds(), "checkpoint": str(self.path)}

    def clear(self) -> None:
        """Remove the folder (after the finished model is saved, or to start over)."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads; the previous count is restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class CheckpointOptions:
    """How a pre-training run checkpoints (never changing the weights): to ``checkpoint_dir`` (None:
    :func:`default_checkpoint_dir` of the output) every ``checkpoint_minutes`` (and every ``checkpoint_every`` steps,
    0 = off); with ``resume`` a checkpoint of the same settings is resumed; ``stop_after_steps`` (steps of this
    session) or ``stop_after_minutes`` end the session early with a checkpoint."""

    checkpoint_dir: str | Path | None = None
    checkpoint_minutes: float = 5.0
    checkpoint_every: int = 0
    resume: bool = True
    stop_after_steps: int | None = None
    stop_after_minutes: float | None = None

    def check(self) -> None:
        """``ValueError`` naming the option for a negative interval or a stop before the first step."""
        for name, value in (("checkpoint_minutes", self.checkpoint_minutes),
                            ("checkpoint_every", self.checkpoint_every)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (got {value})")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"stop_after_steps must be >= 1 (got {self.stop_after_steps})")

    def open(self, out_dir: str | Path, fingerprint: dict[str, Any]) -> Checkpoints:
        """The run's :class:`Checkpoints` for the output ``out_dir`` and the run's ``fingerprint``."""
        return Checkpoints(self.checkpoint_dir or default_checkpoint_dir(out_dir), fingerprint,
                           every_steps=self.checkpoint_every, minutes=self.checkpoint_minutes, resume=self.resume,
                           stop_after_steps=self.stop_after_steps, stop_after_minutes=self.stop_after_minutes)


def budget_and_settings(summary: dict[str, Any]) -> list[str]:
    """The adapter's and decoder's cards' closing lines: the budget line (optimiser steps and the measured wall time,
    summed over resumed sessions, which it then says), then :func:`settings_block`."""
    budget = (f"{summary['budget_steps']} optimiser steps, measured {summary['wall_seconds'] / 60:.1f} min of wall "
              f"time on the CPU with {summary['settings']['threads']} torch threads"
              + (" (summed over resumed sessions)." if summary.get("resumed") else "."))
    return [budget, "", *settings_block(summary["settings"])]


def settings_block(settings: dict[str, Any]) -> list[str]:
    """The model cards' closing lines: every setting as sorted JSON."""
    return ["Full settings:", "", "```json", json.dumps(settings, indent=2, sort_keys=True), "```", ""]


#: :class:`PretrainSettings` fields that come from the workflow config (their config key paths): the demo renderer's
#: resolution, prompt, image sizes and canny thresholds. The CLI has no flag for them.
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "resolution": ("model", "resolution"),
    "prompt": ("model", "prompt"),
    "min_size": ("data", "demo", "min_size"),
    "max_size": ("data", "demo", "max_size"),
    "canny_low": ("condition", "canny_low"),
    "canny_high": ("condition", "canny_high"),
}


def config_settings(config: dict[str, Any], cls: type, what: str, fields: dict[str, tuple[str, ...]],
                    overrides: dict[str, Any] | None = None) -> Any:
    """``cls`` (a settings dataclass) from a workflow config: each of ``fields`` read at its key path, then the
    non-None ``overrides``; unknown names are a ``ValueError``."""
    values = {}
    for name, keys in fields.items():
        value = config
        for key in keys:
            value = value[key]
        values[name] = value
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{what} settings: unknown {unknown}")
    return cls(**values)


@dataclass(frozen=True)
class Pretraining:
    """One pretraining subcommand (``hardgen <name>``): its settings dataclass, the fields read from the workflow config
    (field -> key path; the CLI has no flag for them) and its
    ``run(first, out_dir, settings, command=..., checkpointing=...)``."""

    name: str
    settings: type
    config_fields: dict[str, tuple[str, ...]]
    run: Callable[..., dict[str, Any]]

    def settings_from_config(self, config: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
        """Settings that match a workflow config (the config fields), then the non-None ``overrides``."""
        return config_settings(config, self.settings, self.name, self.config_fields, overrides)

    def setting_names(self) -> list[str]:
        """The names of the settings' fields (the CLI exposes each as ``--name-with-dashes``)."""
        return [f.name for f in dataclasses.fields(self.settings)]


class TrainingState:
    """A stage's resumable state: the model (only its trainable parameters when ``trainable_only``), optimiser, LR
    schedule, generator and the ``extra`` objects with a ``state_dict`` (the UNet's EMA), named ``stage``."""

    def __init__(self, stage: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
                 generator: torch.Generator, *, trainable_only: bool = False, extra: dict[str, Any] | None = None):
        self.stage, self.model, self.optimizer, self.schedule, self.generator = (stage, model, optimizer, schedule,
                                                                                 generator)
        self.trainable = ({name for name, p in model.named_parameters() if p.requires_grad} if trainable_only
                          else None)
        self.extra = extra or {}

    def restore(self, state: dict[str, Any] | None, row: Callable[[Any], Any]) -> list[Any]:
        """Load a checkpoint's ``state`` (None: a fresh start) into the live objects; return its log, each entry
        through ``row`` (``[]`` for a fresh start)."""
        if state is None:
            return []
        self.model.load_state_dict(state["model"], strict=self.trainable is None)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        for name, value in self.extra.items():
            value.load_state_dict(state[name])
        return [row(entry) for entry in state["log"]]

    def snapshot(self, log: list[Any]) -> dict[str, Any]:
        """The checkpoint of the state now, with the loss ``log`` so far."""
        model = self.model.state_dict()
        if self.trainable is not None:
            model = {k: v for k, v in model.items() if k in self.trainable}
        return {"stage": self.stage, "model": model, "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(),
                **{name: value.state_dict() for name, value in self.extra.items()}, "log": log}


def default_checkpoint_dir(out_dir: str | Path) -> Path:
    """``<parent>/.<name>.pretrain-checkpoint``: next to the output folder, git-ignored, removed when it is saved."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.pretrain-checkpoint"


# ------------------------------------------------------------------------------------------------ stages
def train_vae(vae: torch.nn.Module, pixels: torch.Tensor, settings: PretrainSettings,
              checkpoints: Checkpoints | None = None, state: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Train ``vae`` in place on ``pixels`` ((N, 3, R, R) in [-1, 1]), whole or in random ``vae_crop`` crops;
    return per-step losses.

    ``checkpoints`` saves the stage's state as it goes (global steps 1..vae_steps); ``state`` (a checkpoint of this
    stage) resumes it bit-exactly: weights, optimiser, schedule, generator and the losses so far.

    Loss = mean |x - decode(z)| + kl_weight * mean KL(q(z|x) || N(0, I)), z drawn from the posterior: SD's VAE
    objective without LPIPS and the discriminator (the demo needs faithful colours and shapes, not crisp detail).
    One-cycle learning rate (short warm-up, cosine decay), gradients clipped at ``max_grad_norm``.
    """
    s = settings
    generator = torch.Generator().manual_seed(s.seed + 101)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, s.vae_lr, total_steps=s.vae_steps, pct_start=0.05)
    vae.to(memory_format=torch.channels_last).train()  # channels-last convolutions: ~30 % faster on the CPU
    training = TrainingState("vae", vae, optimizer, schedule, generator)
    log: list[dict[str, float]] = training.restore(state, dict)
    crop = s.vae_crop or pixels.shape[-1]
    span = pixels.shape[-1] - crop + 1

    for step in tqdm(range(len(log), s.vae_steps), desc="VAE", unit="step", initial=len(log), total=s.vae_steps):
        index = torch.randint(0, len(pixels), (s.vae_batch,), generator=generator)
        top, left = torch.randint(0, span, (2,), generator=generator).tolist()
        x = pixels[index, :, top:top + crop, left:left + crop].contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(posterior.mean + posterior.std * noise).sample
        l1 = (recon - x).abs().mean()
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        loss = l1 + s.kl_weight * kl
        optimiser_step(loss, vae, optimizer, schedule, s.max_grad_norm, "VAE", step)
        log.append({"l1": float(l1.detach()), "kl": float(kl.detach())})
        if checkpoints is not None:
            checkpoints.tick(step + 1, lambda: training.snapshot(log))
    vae.to(memory_format=torch.contiguous_format).eval()  # safetensors stores contiguous tensors
    return log


@torch.no_grad()
def latent_moments(vae: torch.nn.Module, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Posterior moments (mean, logvar stacked on dim 1) of every image: the UNet stage never runs the VAE."""
    vae.eval()
    return torch.cat([vae.encode(pixels[i:i + batch]).latent_dist.parameters
                      for i in tqdm(range(0, len(pixels), batch), desc="encode", unit="batch")])


def posterior_sample(moments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw from each diagonal-Gaussian posterior (``moments``: mean and logvar stacked on dim 1), unscaled."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """``LambdaLR`` factor: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def latent_scaling_factor(moments: torch.Tensor, seed: int) -> float:
    """``1 / std`` of posterior samples, rounded to 5 digits: SD's ``scaling_factor`` (0.18215), measured the same way,
    so the UNet sees unit-variance latents and the noise schedule means what it says."""
    sample = posterior_sample(moments, torch.Generator().manual_seed(seed + 202))
    return round(1.0 / float(sample.std()), 5)


def train_unet(
    unet: torch.nn.Module,
    moments: torch.Tensor,
    scaling_factor: float,
    prompt_embeds: torch.Tensor,
    empty_embeds: torch.Tensor,
    noise_scheduler: Any,
    settings: PretrainSettings,
    checkpoints: Checkpoints | None = None,
    state: dict[str, Any] | None = None,
) -> list[float]:
    """Train ``unet`` with the DDPM epsilon loss on scaled latents; return the per-step losses.

    ``checkpoints`` / ``state``: as in :func:`train_vae` (global steps vae_steps + 1 .. vae_steps + unet_steps;
    the EMA is part of the state).

    Each step draws images, a latent from each posterior (as SD training does), noise and uniform timesteps,
    and the prompt embedding, replaced by the empty prompt's with ``empty_prompt_prob``. AdamW with linear
    warm-up then cosine decay; the EMA (diffusers' ``EMAModel``, warm-up ``(1+t)/(10+t)`` capped at ``ema_decay``)
    replaces the trained weights at the end, so on return ``unet`` holds the averaged weights (what is saved).
    """
    from diffusers.training_utils import EMAModel

    s = settings
    if noise_scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"scheduler prediction_type {noise_scheduler.config.prediction_type!r}: pretraining "
                         "implements the epsilon loss only")
    generator = torch.Generator().manual_seed(s.seed + 303)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=s.unet_lr, weight_decay=0.0)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(s.warmup_steps, s.unet_steps))
    ema = EMAModel(unet.parameters(), decay=s.ema_decay)
    n_timesteps = noise_scheduler.config.num_train_timesteps
    unet.to(memory_format=torch.channels_last).train()
    training = TrainingState("unet", unet, optimizer, schedule, generator, extra={"ema": ema})
    log: list[float] = training.restore(state, float)

    for step in tqdm(range(len(log), s.unet_steps), desc="UNet", unit="step", initial=len(log), total=s.unet_steps):
        index = torch.randint(0, len(moments), (s.unet_batch,), generator=generator)
        latents = posterior_sample(moments[index], generator) * scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, n_timesteps, (s.unet_batch,), generator=generator)
        drop = torch.rand(s.unet_batch, generator=generator) < s.empty_prompt_prob
        hidden = torch.where(drop.view(-1, 1, 1), empty_embeds, prompt_embeds)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps).contiguous(memory_format=torch.channels_last)
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=hidden).sample, noise)
        optimiser_step(loss, unet, optimizer, schedule, s.max_grad_norm, "UNet", step)
        ema.step(unet.parameters())
        log.append(float(loss.detach()))
        if checkpoints is not None:
            checkpoints.tick(s.vae_steps + step + 1, lambda: training.snapshot(log))
    ema.copy_to(unet.parameters())
    unet.to(memory_format=torch.contiguous_format).eval().requires_grad_(False)
    return log


def optimiser_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
          max_grad_norm: float, stage: str, step: int) -> None:
    """One optimiser step on a finite loss: backward, clip the gradient norm, step the optimiser and the schedule."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"pretrain {stage}: loss is {float(loss)} at step {step}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()


# ---------------------------------------------------------------------------------------------- the run
def pretrain_tiny_sd(
    config_dir: str | Path,
    out_dir: str | Path,
    settings: PretrainSettings = PretrainSettings(),
    command: str | None = None,
    checkpointing: CheckpointOptions = CheckpointOptions(),
) -> dict[str, Any]:
    """Pre-train the tiny SD of ``config_dir`` (``model.tiny_config``) and save it to ``out_dir``; return a summary.

    Starts from :func:`hardgen.models.base_model.random_sd_pipeline` (the ``tiny`` base's weights for the same seed),
    trains the VAE, sets its ``scaling_factor`` from the pool's latents, trains the UNet on them, and saves the
    pipeline with the UNet's EMA weights and a ``README.md`` (settings, losses, held-out PSNR, step budget, wall
    time, ``command``). Uses ``settings.threads`` torch threads (restored afterwards). Bad settings raise
    ``ValueError`` before any work; the folder is written atomically, so a failed or interrupted run leaves the old
    ``out_dir`` as it was.

    Checkpoints (:class:`Checkpoints`) are made as ``checkpointing`` says (:class:`CheckpointOptions`); a checkpoint
    of the same settings and config folder is resumed, bit-identically. A session stopped early returns
    ``{"complete": False, ...}`` without writing ``out_dir`` (split a long budget over sessions; rerun to go on).
    The checkpoint folder is removed once ``out_dir`` is saved.
    """
    from hardgen.core.io import folder_digests
    from hardgen.models.base_model import random_sd_pipeline, save_sd_folder

    settings.check()
    checkpointing.check()
    try:
        with torch_threads(settings.threads):
            pipe = random_sd_pipeline(config_dir, settings.seed)
            fingerprint = {
                "settings": dataclasses.asdict(settings),
                "config_dir": folder_digests(config_dir),
            }
            checkpoints = checkpointing.open(out_dir, fingerprint)
            measures = _train_stages(pipe, settings, checkpoints)
    except PretrainStopped as stopped:
        LOG.info("%s", stopped)
        return checkpoints.stopped_summary(out_dir, settings.vae_steps + settings.unet_steps)

    summary = {"out": str(out_dir), "complete": True, "settings": dataclasses.asdict(settings), **measures,
               "budget_steps": settings.vae_steps + settings.unet_steps, "wall_seconds": checkpoints.seconds(),
               "resumed": checkpoints.previous_seconds > 0, "device": "cpu"}
    save_sd_folder(pipe, out_dir, {"README.md": model_card(summary, command)})
    checkpoints.clear()
    LOG.info("pre-trained tiny SD saved to %s: %s", out_dir, json.dumps(summary))
    return summary


def _train_stages(pipe: Any, settings: PretrainSettings, checkpoints: Checkpoints) -> dict[str, Any]:
    """Train the VAE (or restore it from a UNet-stage checkpoint), set its ``scaling_factor``, train the UNet; the
    summary's measures (losses, held-out PSNR before and after, scaling factor, condition count) in its key order."""
    from hardgen.data.demo import HELDOUT_STREAM, PRETRAIN_STREAM
    from hardgen.data.train_data import encode_prompts

    state = checkpoints.load()
    images, conditions = render_training_set(settings, settings.images, PRETRAIN_STREAM)
    heldout, _ = render_training_set(dataclasses.replace(settings, condition_share=0.0), settings.heldout,
                                     HELDOUT_STREAM)
    if state is None:
        checkpoints.carry["psnr_random"] = float(reconstruction_psnr(pipe.vae, heldout).mean())
    psnr_random = float(checkpoints.carry["psnr_random"])

    if state is None or state["stage"] == "vae":
        vae_log = train_vae(pipe.vae, to_model_range(np.concatenate([images, conditions])), settings,
                            checkpoints, state)
        # the UNet stage's checkpoints carry the finished VAE and its losses
        checkpoints.carry.update(vae=pipe.vae.state_dict(), vae_log=vae_log)
        state = None
    else:
        pipe.vae.load_state_dict(checkpoints.carry["vae"])
        pipe.vae.eval()
        vae_log = [dict(row) for row in checkpoints.carry["vae_log"]]
    heldout_psnr = float(reconstruction_psnr(pipe.vae, heldout).mean())
    moments = latent_moments(pipe.vae, to_model_range(images))
    scaling_factor = latent_scaling_factor(moments, settings.seed)
    pipe.vae.register_to_config(scaling_factor=scaling_factor)

    with torch.no_grad():
        prompts = encode_prompts({"tokenizer": pipe.tokenizer, "text_encoder": pipe.text_encoder.eval()},
                                 settings.prompt, "sd15", torch.device("cpu"))
    unet_log = train_unet(pipe.unet, moments, scaling_factor, prompts.prompt, prompts.empty, pipe.scheduler,
                          settings, checkpoints, state)
    tail = max(1, len(unet_log) // 10)
    vae_tail = vae_log[-max(1, len(vae_log) // 10):]
    return {
        "vae_l1": float(np.mean([row["l1"] for row in vae_tail])),
        "vae_kl": float(np.mean([row["kl"] for row in vae_tail])),
        "unet_mse_first": float(np.mean(unet_log[:tail])),
        "unet_mse": float(np.mean(unet_log[-tail:])),
        "heldout_psnr": heldout_psnr,
        "heldout_psnr_random_vae": psnr_random,
        "scaling_factor": scaling_factor,
        "condition_images": len(conditions),
    }


def model_card(summary: dict[str, Any], command: str | None = None) -> str:
    """The ``README.md`` of a pre-trained folder: how it was made, what it reached and what it cost (the measured wall
    time is the only line a rerun changes; the weights are bit-identical)."""
    s = summary["settings"]
    lines = [
        "# tiny-sd-polyp: the hardgen demo's pre-trained tiny Stable Diffusion",
        "",
        "A normal diffusers `StableDiffusionPipeline` folder (safetensors, fp32): the tiny SD of `resources/tiny-sd`",
        "pre-trained on procedural colonoscopy-like images by `hardgen.pretrain.tiny_sd`, so that the demo's base",
        "(`config/config.yaml`: `model.base: resources/tiny-sd-polyp`) has learned its data.",
        "",
        f"Made by `{command or 'hardgen pretrain-tiny --out build/tiny-sd-polyp-base'}` (`make tiny-sd` runs the",
        f"defaults) with seed {s['seed']} and {s['threads']} torch threads on the CPU; the same command, seed and",
        "thread count give the same weights.",
        "",
        "## Data",
        f"{s['images']} images from the demo's own renderer (`hardgen.data.demo.render_demo_pool`, seed stream",
        "`[seed, 3, i]`, which the demo dataset never draws from), the five demo styles in equal shares, raw sides",
        (f"{s['min_size']}-{s['max_size']} px brought to {s['resolution']} px by `hardgen.core.io.fit_square`. "
         "The VAE also"),
        f"saw {summary['condition_images']} condition images (canny {s['canny_low']}/{s['canny_high']} edges and",
        "masks of the same polyps): Control-LoRA encodes its condition with this VAE.",
        "",
        "## Training",
        (f"- VAE: {s['vae_steps']} steps of {s['vae_batch']} "
         + (f"random {s['vae_crop']} px crops" if s["vae_crop"] else f"whole {s['resolution']} px images")
         + f", AdamW lr {s['vae_lr']}"),
        f"  (one-cycle), loss L1 + {s['kl_weight']} x KL (per element); `scaling_factor` = 1 / std of the pool's",
        f"  latents = {summary['scaling_factor']}.",
        f"- UNet: {s['unet_steps']} steps of {s['unet_batch']}, AdamW lr {s['unet_lr']} ({s['warmup_steps']} warm-up",
        "  steps, then cosine decay), DDPM epsilon MSE on the scaled latents, prompt",
        f"  \"{s['prompt']}\" (the empty prompt with p = {s['empty_prompt_prob']}); the EMA weights",
        f"  (decay {s['ema_decay']}) are saved.",
        "- Text encoder: random-init and frozen (the `tiny` base's for the same seed); scheduler and tokenizer:",
        "  `resources/tiny-sd`'s.",
        "",
        "## Losses",
        "",
        "| measure | value |",
        "|---|---|",
        f"| VAE L1, last 10 % of steps (pixels in [-1, 1]) | {summary['vae_l1']:.4f} |",
        f"| VAE KL per latent element, last 10 % of steps | {summary['vae_kl']:.3f} |",
        f"| UNet epsilon MSE, first 10 % of steps | {summary['unet_mse_first']:.4f} |",
        f"| UNet epsilon MSE, last 10 % of steps | {summary['unet_mse']:.4f} |",
        (f"| held-out reconstruction PSNR ({s['heldout']} images of stream `[seed, 4, i]`) | "
         f"{summary['heldout_psnr']:.2f} dB |"),
        f"| the same, random-init VAE | {summary['heldout_psnr_random_vae']:.2f} dB |",
        "",
        "## Budget",
        "",
        (f"{summary['budget_steps']} optimiser steps ({s['vae_steps']} VAE + {s['unet_steps']} UNet), measured "
         f"{summary['wall_seconds'] / 60:.1f} min of wall time on the CPU with {s['threads']} torch threads, from the"),
        "rendering of the images to the last step" + (" (summed over resumed sessions)" if summary.get("resumed")
                                                      else "") + ".",
        "",
        *settings_block(s),
    ]
    return "\n".join(lines)


#: ``hardgen pretrain-tiny``: ``run(config_dir, out_dir, settings, ...)``.
PRETRAINING = Pretraining("pretrain-tiny", PretrainSettings, CONFIG_FIELDS, pretrain_tiny_sd)
