"""Training-free hardness from the plain Control-LoRA: noise mining (``mined``) and discrepancy guidance (``guided``).

Both judge a sample the way the hard loss does (:class:`hardgen.generator.objectives.HardnessJudge`: the in-loss
backbones ``hard.loss_backbones``, the mask-box crop padded by ``hard.crop_pad``, the distance of the crop's
feature to the real prototype) and need no training, only the plain LoRA:

* ``mined``: for every sample, ``generation.candidates`` initial noises (candidate 0 is the sample's own seed,
  the plain sample's noise; the others are derived from it, :func:`candidate_seed`) run the first
  ``generation.mining_steps`` sampler steps, batched; each candidate's clean estimate x̂0 (the solver's data
  prediction after the last of those steps) is decoded and scored, and the most discrepant noise is then
  generated in full by the normal pipeline. The kept image is therefore exactly the plain image of that
  noise, and ``candidates: 1`` gives the plain variant bit for bit.
* ``guided``: at the sampler steps inside ``generation.guided.window`` the latents are pushed up the
  discrepancy's gradient (classifier guidance with the judge as the classifier), through the pipeline's public
  ``callback_on_step_end``. The gradient is taken on the decoded x̂0 (through the VAE decoder and the
  backbones) and treats the UNet's noise estimate as constant (no backpropagation through the UNet, as in
  manifold-preserving guided diffusion, He et al. 2024): moving x̂0 by δ with the noise estimate fixed moves the
  next latents by √ᾱ_next·δ. δ is the per-sample gradient scaled to RMS ``strength`` (in latent units), so
  one strength means the same step on any backbone and model, whatever the scale of its features.

Several in-loss backbones are combined as the mean of their z-scores ``(d − real mean) / real sd`` (the
spread of the real training features, stored with each prototype): the hard loss's margin normalisation needs
margins calibrated by training (``margin_factor`` × the LoRA's own mean distance), which a training-free
method does not have, and z is the scale the filter's hardness (``filter.score_backbone: all``) and the
report use. With one backbone, z ranks exactly as the distance does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hardgen.core.io import sample_seed
from hardgen.models.control_lora import decode_unit_images, vae_upcast
from hardgen.models.sampling import (
    PickedNoise,
    PickNoise,
    RenderBatch,
    Sampling,
    unit_to_uint8,
)

log = logging.getLogger("hardgen.generator.mining")

#: A discrepancy: (images (B, 3, H, W) float in [0, 1], masks (B, 1, H, W) bool) -> (B,), higher = harder;
#: differentiable with respect to the images (``guided`` follows its gradient).
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class MiningSettings:
    """``generation.candidates`` noises per sample, scored after ``generation.mining_steps`` sampler steps."""

    candidates: int
    mining_steps: int

    def check(self, steps: int) -> None:
        """Raise ValueError naming the config key when a value cannot work with ``steps`` sampler steps."""
        for key, value in (("candidates", self.candidates), ("mining_steps", self.mining_steps)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"generation.{key} must be an integer >= 1, got {value!r}")
        if self.mining_steps >= steps:
            raise ValueError(f"generation.mining_steps ({self.mining_steps}) must be below generation.steps "
                             f"({steps}): the candidates are scored part-way, then the kept one is sampled in full")


@dataclass(frozen=True)
class GuidanceSettings:
    """``generation.guided``: RMS ``strength`` of the x̂0 step (latent units) at the steps inside ``window``."""

    strength: float
    window: tuple[float, float]

    def check(self) -> None:
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"generation.guided.strength must be a finite number >= 0, got {self.strength!r}")
        try:
            start, end = (float(v) for v in self.window)
        except (TypeError, ValueError) as err:
            raise ValueError(f"generation.guided.window: expected [start, end], got {self.window!r}") from err
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"generation.guided.window: need 0 <= start < end <= 1, got [{start}, {end}]")

    def active(self, step: int, steps: int) -> bool:
        """Whether sampler step ``step`` (0-based) of ``steps`` is guided: ``start <= step / steps < end``."""
        start, end = self.window
        return start <= step / steps < end


def candidate_seed(seed: int, candidate: int) -> int:
    """The seed of mining candidate ``candidate`` of a sample seeded ``seed``: candidate 0 is the seed itself
    (the plain sample's noise), the others are hashed from it (:func:`hardgen.core.io.sample_seed`)."""
    if candidate < 0:
        raise ValueError(f"candidate index must be >= 0, got {candidate}")
    return int(seed) if candidate == 0 else sample_seed(f"candidate-{candidate}", int(seed))


# -------------------------------------------------------------------------------------------- judge
class DiscrepancyJudge:
    """Mean z-score over the in-loss backbones of a :class:`~hardgen.generator.objectives.HardnessJudge` (see the
    module doc)."""

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.keys = sorted(judge.backbones)

    def distances(self, images01: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-backbone distances ‖f − p‖₂ (B,), exactly the hard loss's (mask-box crop, same prototypes)."""
        return self.judge.distances(images01, masks)

    def __call__(self, images01: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        distances = self.distances(images01, masks)
        z = [(distances[k] - self.judge.real_spread[k][0]) / self.judge.real_spread[k][1] for k in self.keys]
        return torch.stack(z).mean(dim=0)


def load_judge(
    backbones: Mapping[str, Mapping[str, Any]],
    prototypes: Mapping[str, str | Path],
    *,
    resolution: int,
    pad: int,
    device: str | torch.device = "cpu",
) -> DiscrepancyJudge:
    """The hard loss's judge for generation: ``backbones`` (key -> ``backbones.<key>`` entry of the in-loss
    backbones) with their prototype files, checked as training checks them (backbone name, resolution)."""
    from hardgen.generator.objectives import HardnessJudge
    from hardgen.generator.train_settings import TrainSettings

    if not backbones:
        raise ValueError("hard.loss_backbones: mining and guidance need at least one in-loss backbone")
    missing = sorted(set(backbones) - set(prototypes))
    if missing:
        raise ValueError(f"in-loss backbones {missing}: no prototype file given")
    # HardnessJudge reads the crop pad, the backbones, their prototypes and the resolution of a run's settings;
    # the other (training) fields are not used here
    settings = TrainSettings(base="", conditions_csv="", manifest_csv="", out_dir="", resolution=int(resolution),
                             crop_pad=int(pad), backbones={k: dict(v) for k, v in backbones.items()},
                             prototypes={k: str(prototypes[k]) for k in backbones})
    judge = DiscrepancyJudge(HardnessJudge(settings, torch.device(device)))
    log.info("discrepancy judge: mean z over %s", ", ".join(judge.keys))
    return judge


def masks_tensor(masks: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) bool tensor from HxW bool masks."""
    return torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks]))[:, None].to(device)


# ---------------------------------------------------------------------------------------- sampling
def scheduler_x0(scheduler: Any) -> torch.Tensor:
    """The clean-latent estimate x̂0 of the sampler step just taken, from the solver's state.

    The pipeline's loop keeps only a step's ``prev_sample``, so ``pred_original_sample`` (which UniPC does not
    return anyway) is out of reach; the multistep solvers keep their latest *data prediction* — x̂0 from the
    UNet output, ``predict_x0`` in the base's prediction type — as ``model_outputs[-1]``: UniPC with
    ``predict_x0`` (its default, hardgen's sampler) and DPM-Solver++. Other schedulers raise.
    """
    outputs = getattr(scheduler, "model_outputs", None)
    config = scheduler.config
    if "predict_x0" in config:
        data_prediction = bool(config["predict_x0"])
    else:
        data_prediction = config.get("algorithm_type") in ("dpmsolver++", "sde-dpmsolver++")
    if not data_prediction or not outputs or outputs[-1] is None:
        raise ValueError(f"{type(scheduler).__name__}: mining and guidance read x̂0 from a multistep solver's data "
                         f"prediction (UniPC with predict_x0, DPM-Solver++); this scheduler does not keep one")
    return outputs[-1]


def x0_after(pipe: Any, sampling: Sampling, condition_images: list[np.ndarray], generators: list[torch.Generator],
             steps_taken: int) -> torch.Tensor:
    """x̂0 after the first ``steps_taken`` of the ``sampling.steps`` sampler steps (the same schedule as the full
    run), then the pipeline is interrupted (diffusers' ``_interrupt``: the remaining steps are skipped)."""
    captured: dict[str, torch.Tensor] = {}

    def stop(p: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if step == steps_taken - 1:
            captured["x0"] = scheduler_x0(p.scheduler).clone()
            p._interrupt = True
        return {}

    with torch.inference_mode():
        sampling(pipe, condition_images, generators, callback_on_step_end=stop, output_type="latent")
    if "x0" not in captured:
        raise RuntimeError(f"sampling stopped before step {steps_taken} of {sampling.steps}")
    return captured["x0"]


# ------------------------------------------------------------------------------------------ mining
def candidate_scores(
    pipe: Any,
    sampling: Sampling,
    score: ScoreFn,
    condition_images: list[np.ndarray],
    masks: list[np.ndarray],
    seeds: list[int],
    settings: MiningSettings,
    *,
    batch_size: int,
) -> np.ndarray:
    """(samples, candidates) discrepancy of every candidate's x̂0 after ``settings.mining_steps`` steps.

    Candidates run sample-major in batches of ``batch_size`` (so a chunk's batches never depend on the shard
    count); each batch is decoded and scored at once.
    """
    settings.check(sampling.steps)
    items = [(i, c) for i in range(len(seeds)) for c in range(settings.candidates)]
    scores = np.full((len(seeds), settings.candidates), np.nan)
    device = pipe.device
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(candidate_seed(seeds[i], c)) for i, c in batch]
        x0 = x0_after(pipe, sampling, [condition_images[i] for i, _ in batch], generators, settings.mining_steps)
        with torch.inference_mode(), vae_upcast(pipe.vae):
            values = score(decode_unit_images(pipe.vae, x0), masks_tensor([masks[i] for i, _ in batch], device))
        values = values.detach().double().cpu().numpy()
        if values.shape != (len(batch),):
            raise RuntimeError(f"discrepancy returned shape {values.shape} for {len(batch)} images")
        for (i, c), value in zip(batch, values):
            scores[i, c] = value
    return scores


def pick_candidates(scores: np.ndarray) -> list[int]:
    """The most discrepant candidate per sample (row); ties go to the lower index (candidate 0: the plain noise).

    A non-finite score is an error (it names the sample row and candidate), never a silent pick.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"candidate scores must be (samples, candidates), got shape {scores.shape}")
    bad = np.argwhere(~np.isfinite(scores))
    if len(bad):
        row, column = bad[0]
        raise RuntimeError(f"non-finite discrepancy {scores[row, column]} for sample {row} of the batch, candidate "
                           f"{column} (decode overflow? try an fp32 VAE, model.vae)")
    return [int(c) for c in np.argmax(scores, axis=1)]  # argmax returns the first maximum


def noise_picker(pipe: Any, sampling: Sampling, score: ScoreFn, settings: MiningSettings, *,
                 batch_size: int) -> PickNoise:
    """A :data:`~hardgen.generator.generate.PickNoise` for ``mined``: each sample's most discrepant candidate noise."""
    settings.check(sampling.steps)

    def pick(condition_images: list[np.ndarray], masks: list[np.ndarray], seeds: list[int]) -> list[PickedNoise]:
        scores = candidate_scores(pipe, sampling, score, condition_images, masks, seeds, settings,
                                  batch_size=batch_size)
        chosen = pick_candidates(scores)
        return [PickedNoise(candidate_seed(seed, c), c, float(scores[i, c]))
                for i, (seed, c) in enumerate(zip(seeds, chosen))]

    return pick


# ---------------------------------------------------------------------------------------- guidance
def guidance_callback(score: ScoreFn, masks: torch.Tensor, settings: GuidanceSettings,
                      steps: int) -> Callable[..., dict[str, torch.Tensor]]:
    """``callback_on_step_end`` that moves the latents up the discrepancy gradient at the guided steps.

    After step ``i`` (inside the window): g = ∇ score(decode(x̂0_i)) with respect to x̂0_i (the UNet's noise
    estimate held fixed), δ = ``strength`` · g / RMS(g) per sample, latents += √ᾱ(t_{i+1}) · δ (1 after the
    last step).
    """
    settings.check()

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if settings.strength == 0 or not settings.active(step, steps):
            return {}
        # the VAE stays upcast across the forward *and* the backward (:func:`vae_upcast`)
        with vae_upcast(pipe.vae), torch.enable_grad():
            x0 = scheduler_x0(pipe.scheduler).detach().float().requires_grad_(True)
            # per-sample scores: each gradient is its own sample's
            total = score(decode_unit_images(pipe.vae, x0), masks).sum()
            (grad,) = torch.autograd.grad(total, x0)
        rms = grad.pow(2).mean(dim=tuple(range(1, grad.ndim)), keepdim=True).sqrt()
        delta = settings.strength * grad / rms.clamp_min(1e-12)
        timesteps = pipe.scheduler.timesteps
        alpha = 1.0
        if step + 1 < len(timesteps):
            alpha = float(pipe.scheduler.alphas_cumprod[int(timesteps[step + 1])]) ** 0.5
        latents = tensors["latents"]
        return {"latents": latents + (alpha * delta).to(device=latents.device, dtype=latents.dtype)}

    return callback


def guided_renderer(pipe: Any, sampling: Sampling, score: ScoreFn, settings: GuidanceSettings) -> RenderBatch:
    """A :data:`~hardgen.generator.generate.RenderBatch` for ``guided``: the pipeline with :func:`guidance_callback`.

    Runs under ``no_grad`` (the pipeline's own), not inference mode, so the callback can take gradients.
    """
    settings.check()

    def render(condition_images: list[np.ndarray], generators: list[torch.Generator],
               masks: list[np.ndarray]) -> np.ndarray:
        callback = guidance_callback(score, masks_tensor(masks, pipe.device), settings, sampling.steps)
        result = sampling(pipe, condition_images, generators, callback_on_step_end=callback)
        return unit_to_uint8(result.images)

    return render
