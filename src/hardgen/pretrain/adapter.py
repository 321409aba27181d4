"""Pre-train the demo's condition adapter: a Control-LoRA for the demo's condition (``condition.type``: the binary
mask, as the authors conditioned their polyp run) on the pre-trained tiny base (``hardgen pretrain-adapter``, the
last two steps of ``make tiny-sd``).

What control-lora-v3 ships for SD1.5 (a canny Control-LoRA trained for thousands of steps on a frozen base), shrunk
to the demo: the demo's plain LoRA starts from it (``lora.init_weights``) instead of from zero, so its 40 steps
fine-tune a model that already places its polyp where the condition says, and plain, hard, feedback and mined
samples can be told apart by what the method changes, not by where the polyp landed.

The adapter is the demo's own (``lora.preset`` / ``rank`` / ``conv_in_rank``: the file loads as ``init_weights``
with the same shapes), trained on the frozen base with the workflow's training path pieces: the condition is
VAE-encoded (posterior samples, as control-lora-v3 trains) and concatenated to the noisy latent through the widened
``conv_in`` (:func:`hardgen.models.control_lora.widen_conv_in` /
:func:`~hardgen.models.control_lora.add_control_lora`); the
loss is the DDPM epsilon MSE. Three measured departures from a plain Control-LoRA recipe move the tiny model towards
the layout within the CPU budget (docs/measurements.md has the runs):

* ``timesteps: cubic``: t = (1 − u³)·T, T2I-Adapter's schedule, which draws most steps at high noise, where a
  sample's layout is decided (the uniform draw teaches the condition at low noise only);
* ``mask_weight``: the epsilon error inside the polyp's mask (at the latent grid) counts ``1 + mask_weight`` times,
  renormalised per image so the loss keeps its scale: the demo's polyps are faint tints on busy mucosa, a small
  share of the pixels that a uniform loss learns last. Polyp-synthesis diffusion models (ArSDM) re-weight their
  loss by the mask for the same reason;
* ``loss_weighting: v`` in a second stage (``init_weights``: continue the first stage's file): each image's epsilon
  error weighted min(1 + 1/SNR(t), ``weighting_cap``), the v-prediction loss in epsilon terms. The epsilon loss sees a
  high-noise sample's x0 error, the layout, scaled by SNR(t) (~0.005 at t = 999), so the cubic draw alone picks the
  right steps but learns little from them; the v-weighted stage moved the held-out margin from −0.19 to 0.16
  (through the base's first decoder; 0.91 through the fine-tuned one, :mod:`hardgen.pretrain.decoder`).

The run is seeded and resumable like the base's (:class:`hardgen.pretrain.tiny_sd.Checkpoints`, fingerprinted with the
settings and the base folder's digest), and the folder it writes (``pytorch_lora_weights.safetensors`` in the
control-lora-v3 format and a ``README.md``) carries the budget, the measured wall time and the mask-following measure
(:mod:`hardgen.scoring.mask_following`) of the base with the adapter on held-out masks, sampled as the workflow samples.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hardgen.pretrain.tiny_sd import (
    CONFIG_FIELDS as BASE_CONFIG_FIELDS,
)
from hardgen.pretrain.tiny_sd import (
    CheckpointOptions,
    Checkpoints,
    Pretraining,
    PretrainStopped,
    TrainingState,
    bound_problems,
    budget_and_settings,
    image_problems,
    latent_moments,
    optimiser_step,
    posterior_sample,
    prompt_problems,
    raise_problems,
    render_pool,
    to_model_range,
    torch_threads,
    warmup_cosine,
)

LOG = logging.getLogger("hardgen.pretrain.adapter")
ADAPTER = "condition"
TIMESTEP_DRAWS = ("uniform", "cubic")
LOSS_WEIGHTINGS = ("epsilon", "v")
#: :class:`AdapterSettings` fields that come from the workflow config (their key paths; the CLI has no flag for them):
#: the base's (:data:`hardgen.pretrain.tiny_sd.CONFIG_FIELDS`), the condition, the LoRA's shape, the plain training's
#: prompt dropout and the sampler's steps.
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    **BASE_CONFIG_FIELDS,
    "condition": ("condition", "type"),
    "preset": ("lora", "preset"),
    "rank": ("lora", "rank"),
    "conv_in_rank": ("lora", "conv_in_rank"),
    "empty_prompt_prob": ("train", "empty_prompt_prob"),
    "sample_steps": ("generation", "steps"),
}


@dataclass(frozen=True)
class AdapterSettings:
    """Every knob of the adapter pre-training; the defaults made the shipped ``resources/tiny-sd-polyp-mask``."""

    seed: int = 0
    images: int = 2000  # the base's pre-training pool (same renderer stream): images, masks and their conditions
    heldout: int = 144  # held-out masks (stream [seed, 4, i]) for the model card's mask-following measure
    resolution: int = 64  # model.resolution
    min_size: int = 72  # data.demo.min_size / max_size
    max_size: int = 112
    prompt: str = "an endoscopic image of a colon polyp"  # model.prompt
    condition: str = "mask"  # condition.type
    canny_low: int = 100  # condition.canny_low / canny_high
    canny_high: int = 200
    preset: str = "half_skip_attn"  # lora.preset / rank / conv_in_rank: the demo's plain LoRA loads it as is
    rank: int = 16
    conv_in_rank: int = 64
    steps: int = 3000
    batch: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    timesteps: str = "cubic"
    mask_weight: float = 4.0
    # epsilon: the DDPM epsilon MSE; v: each sample's epsilon error weighted min(1 + 1/SNR(t), weighting_cap) (the
    # v-prediction loss in epsilon terms, capped), renormalised over the batch: the x0 error, i.e. the layout, counts
    # at high noise, where the epsilon loss barely sees it
    loss_weighting: str = "epsilon"
    weighting_cap: float = 20.0
    # a Control-LoRA file of this shape to continue from (the second stage of ``make tiny-sd``); empty: fresh adapters
    init_weights: str = ""
    empty_prompt_prob: float = 0.1  # train.empty_prompt_prob
    max_grad_norm: float = 1.0
    sample_steps: int = 10  # generation.steps of the card's measure (UniPC, guidance 1, as the demo samples)
    threads: int = 2

    def problems(self) -> list[str]:
        """Every invalid setting, named as its field (the CLI flag is the same name with dashes)."""
        problems = bound_problems(
            self, at_least_one=("images", "heldout", "rank", "conv_in_rank", "steps", "batch", "sample_steps",
                                "threads"),
            positive=("lr", "max_grad_norm"), non_negative=("mask_weight", "warmup_steps", "seed"),
            below_one=("empty_prompt_prob",))
        if self.heldout < 2:
            problems.append(f"heldout must be >= 2 (got {self.heldout}): the measure compares against other masks")
        problems += image_problems(self)
        if self.condition not in ("canny", "mask"):
            problems.append(f"condition must be canny or mask (got {self.condition!r})")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            problems.append(f"loss_weighting must be one of {list(LOSS_WEIGHTINGS)} (got {self.loss_weighting!r})")
        if not self.weighting_cap >= 1:
            problems.append(f"weighting_cap must be >= 1 (got {self.weighting_cap})")
        if self.init_weights and not Path(self.init_weights).is_file():
            problems.append(f"init_weights: {self.init_weights} is not a file")
        if self.timesteps not in TIMESTEP_DRAWS:
            problems.append(f"timesteps must be one of {list(TIMESTEP_DRAWS)} (got {self.timesteps!r})")
        return problems + prompt_problems(self)

    def check(self) -> None:
        """Raise ``ValueError`` listing every problem (before any slow work starts)."""
        raise_problems("pretrain-adapter", self.problems())


# ------------------------------------------------------------------------------------------------- data
def render_pairs(settings: AdapterSettings, n: int, stream: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images ``(n, R, R, 3)`` uint8, masks ``(n, R, R)`` bool, conditions ``(n, R, R, 3)`` uint8) of pool
    ``stream`` (:func:`hardgen.pretrain.tiny_sd.render_pool`) and their condition
    (:func:`hardgen.data.conditioning.mask_to_condition` of the resized mask, as ``make_conditions``)."""
    from hardgen.data.conditioning import mask_to_condition

    images, masks = render_pool(settings, n, stream)
    conditions = np.stack([mask_to_condition(m, settings.condition, settings.canny_low, settings.canny_high)
                           for m in masks])
    return images, masks, conditions


def draw_timesteps(kind: str, n: int, n_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps: ``uniform`` on [0, T), or ``cubic`` t = (1 − u³)·T (T2I-Adapter), which puts
    half the draws above 0.79·T."""
    if kind == "uniform":
        return torch.randint(0, n_timesteps, (n,), generator=generator)
    if kind == "cubic":
        u = torch.rand(n, generator=generator)
        return ((1 - u ** 3) * n_timesteps).long().clamp(0, n_timesteps - 1)
    raise ValueError(f"timesteps: unknown draw {kind!r} (expected one of {list(TIMESTEP_DRAWS)})")


def mask_weighted_mse(pred: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, mask_weight: float,
                      sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error with the pixels inside ``masks`` (``(B, 1, h, w)`` in [0, 1] at the latent grid) weighted
    ``1 + mask_weight``, the weights renormalised to mean 1 per image (so ``mask_weight = 0`` is the plain MSE and
    the loss keeps its scale whatever the polyp's size); ``sample_weights`` (``(B,)``, e.g.
    :func:`timestep_weights`) weight each image's error."""
    weights = 1.0 + mask_weight * masks
    weights = weights / weights.mean(dim=(1, 2, 3), keepdim=True)
    error = (pred.float() - target.float()).pow(2) * weights
    if sample_weights is None:
        return error.mean()
    return (error.mean(dim=(1, 2, 3)) * sample_weights.to(error)).mean()


def timestep_weights(kind: str, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                     cap: float) -> torch.Tensor | None:
    """Per-sample loss weights of ``timesteps`` for :func:`mask_weighted_mse`: ``None`` (unweighted) for ``epsilon``;
    for ``v`` ``min(1 + 1/SNR(t), cap)`` (SNR = ᾱ/(1 − ᾱ)), mean 1 over the batch, the factor that turns an epsilon
    error into the v-prediction error, which grows with the noise level: at high noise it is the x0 (layout) error
    that counts."""
    if kind == "epsilon":
        return None
    if kind != "v":
        raise ValueError(f"loss_weighting: unknown weighting {kind!r} (expected one of {list(LOSS_WEIGHTINGS)})")
    alpha = alphas_cumprod.to(torch.float64)[timesteps]
    weights = (1.0 + (1.0 - alpha) / alpha).clamp(max=cap).float()
    return weights / weights.mean()


def latent_masks(masks: np.ndarray, latent_size: int) -> torch.Tensor:
    """Bool masks ``(N, R, R)`` -> ``(N, 1, latent_size, latent_size)`` float coverage (area average)."""
    tensor = torch.from_numpy(masks.astype(np.float32))[:, None]
    return F.adaptive_avg_pool2d(tensor, latent_size)


# ------------------------------------------------------------------------------------------------ the run
def train_adapter(
    unet: torch.nn.Module,
    image_moments: torch.Tensor,
    condition_moments: torch.Tensor,
    masks: torch.Tensor,
    scaling_factor: float,
    prompt_embeds: torch.Tensor,
    empty_embeds: torch.Tensor,
    noise_scheduler: Any,
    settings: AdapterSettings,
    checkpoints: Checkpoints | None = None,
    state: dict[str, Any] | None = None,
) -> list[float]:
    """Train the Control-LoRA ``ADAPTER`` of ``unet`` (widened, adapter added, base frozen); return per-step losses.

    Each step draws images, a latent from each image's and each condition's posterior, noise, timesteps
    (:func:`draw_timesteps`) and the prompt (the empty one with ``empty_prompt_prob``); the loss is
    :func:`mask_weighted_mse` of the epsilon prediction. AdamW on the LoRA parameters, linear warm-up then cosine
    decay, gradients clipped. ``checkpoints`` / ``state`` as in :func:`hardgen.pretrain.tiny_sd.train_unet`.
    """
    s = settings
    if noise_scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"scheduler prediction_type {noise_scheduler.config.prediction_type!r}: the adapter "
                         "pre-training implements the epsilon loss only")
    params = [p for p in unet.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(s.seed + 404)
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(s.warmup_steps, s.steps))
    n_timesteps = noise_scheduler.config.num_train_timesteps
    alphas_cumprod = noise_scheduler.alphas_cumprod
    unet.train()
    training = TrainingState("adapter", unet, optimizer, schedule, generator, trainable_only=True)
    log: list[float] = training.restore(state, float)

    for step in tqdm(range(len(log), s.steps), desc="adapter", unit="step", initial=len(log), total=s.steps):
        index = torch.randint(0, len(image_moments), (s.batch,), generator=generator)
        latents = posterior_sample(image_moments[index], generator) * scaling_factor
        condition = posterior_sample(condition_moments[index], generator) * scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = draw_timesteps(s.timesteps, s.batch, n_timesteps, generator)
        drop = torch.rand(s.batch, generator=generator) < s.empty_prompt_prob
        hidden = torch.where(drop.view(-1, 1, 1), empty_embeds, prompt_embeds)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = unet(torch.cat([noisy, condition], dim=1), timesteps, encoder_hidden_states=hidden).sample
        loss = mask_weighted_mse(pred, noise, masks[index], s.mask_weight,
                                 timestep_weights(s.loss_weighting, timesteps, alphas_cumprod, s.weighting_cap))
        optimiser_step(loss, unet, optimizer, schedule, s.max_grad_norm, "adapter", step)
        log.append(float(loss.detach()))
        if checkpoints is not None:
            checkpoints.tick(step + 1, lambda: training.snapshot(log))
    unet.eval()
    return log


def measure_mask_following(base: str | Path, lora_dir: str | Path, settings: AdapterSettings) -> dict[str, float]:
    """The mask-following row (:func:`hardgen.scoring.mask_following.mask_following_row`) of the base with the adapter
    on ``settings.heldout`` held-out masks, sampled as the workflow samples (:func:`hardgen.generator.generate.
    load_generation_pipeline`, :class:`hardgen.models.sampling.Sampling`, one seeded generator per image), against the
    held-out real images of the same masks: ``own, shuffled, margin_vs_real, dark_corners`` and the real row's."""
    from hardgen.data.demo import HELDOUT_STREAM
    from hardgen.generator.generate import load_generation_pipeline
    from hardgen.models.sampling import Sampling, unit_to_uint8
    from hardgen.scoring.mask_following import mask_following_table, measure_rows

    images, masks, conditions = render_pairs(settings, settings.heldout, HELDOUT_STREAM)
    pipe = load_generation_pipeline(base, lora_dir, device="cpu", dtype="float32")
    pipe.set_progress_bar_config(disable=True)
    sampling = Sampling(settings.prompt, settings.resolution, settings.sample_steps)
    samples = []
    for start in tqdm(range(0, len(conditions), 48), desc="measure", unit="batch"):
        batch = list(conditions[start:start + 48])
        generators = [torch.Generator().manual_seed(settings.seed * 100_003 + start + i) for i in range(len(batch))]
        samples.append(unit_to_uint8(sampling(pipe, batch, generators).images))
    table = mask_following_table((list(images), list(masks)), {"adapter": (list(np.concatenate(samples)), list(masks))},
                                 seed=settings.seed)
    adapter, real = (measure_rows(table).loc[name] for name in ("adapter", "real"))  # the cue's rows
    return ({key: float(adapter[key]) for key in ("own", "shuffled", "margin_vs_real", "dark_corners")}
            | {f"real_{key}": float(real[key]) for key in ("own", "shuffled", "dark_corners")})


def pretrain_adapter(
    base: str | Path,
    out_dir: str | Path,
    settings: AdapterSettings = AdapterSettings(),
    command: str | None = None,
    checkpointing: CheckpointOptions = CheckpointOptions(),
) -> dict[str, Any]:
    """Train the condition adapter of ``base`` (a diffusers SD folder) and save it to ``out_dir``; return a summary.

    ``out_dir`` gets ``pytorch_lora_weights.safetensors`` (:func:`hardgen.models.control_lora.save_control_lora`, its
    header naming the base, preset, condition type and prediction type) and a ``README.md`` (settings, losses, the
    held-out mask-following measure, step budget, wall time, ``command``), written atomically. Checkpoints,
    resuming and early stops as :func:`hardgen.pretrain.tiny_sd.pretrain_tiny_sd` (the checkpoint folder's fingerprint
    covers the settings and the base's files).
    """
    from hardgen.core.io import file_digest, folder_digests
    from hardgen.models.base_model import load_components

    settings.check()
    base = Path(base)
    if not (base / "unet").is_dir() or not (base / "vae").is_dir():
        raise FileNotFoundError(f"{base}: not a diffusers Stable Diffusion folder (unet/ and vae/ expected)")
    checkpointing.check()
    try:
        with torch_threads(settings.threads):
            components = load_components(base, family="sd15", dtype=torch.float32)
            vae, unet = components["vae"].eval(), components["unet"]
            fingerprint = {"settings": dataclasses.asdict(settings),
                           "base": folder_digests(base, skip_names=("README.md",)),
                           "init_weights": file_digest(settings.init_weights) if settings.init_weights else None}
            checkpoints = checkpointing.open(out_dir, fingerprint)
            log = _train_on_pool(components, vae, unet, settings, checkpoints)
    except PretrainStopped as stopped:
        LOG.info("%s", stopped)
        return checkpoints.stopped_summary(out_dir, settings.steps)

    summary = _save_adapter(out_dir, base, unet, log, settings, checkpoints, command)
    checkpoints.clear()
    LOG.info("condition adapter saved to %s: %s", out_dir, json.dumps(summary))
    return summary


def _train_on_pool(components: dict[str, Any], vae: torch.nn.Module, unet: torch.nn.Module, settings: AdapterSettings,
                   checkpoints: Checkpoints) -> list[float]:
    """Encode the pre-training pool, widen ``conv_in``, add the adapter (seeded; ``init_weights`` copied in) and train
    it (resuming ``checkpoints``' state); the loss per step."""
    from hardgen.data.demo import PRETRAIN_STREAM
    from hardgen.data.train_data import encode_prompts
    from hardgen.models.control_lora import (
        add_control_lora,
        assign_lora_weights,
        read_control_lora,
        widen_conv_in,
    )

    state = checkpoints.load()
    images, masks, conditions = render_pairs(settings, settings.images, PRETRAIN_STREAM)
    image_moments = latent_moments(vae, to_model_range(images))
    condition_moments = latent_moments(vae, to_model_range(conditions))
    latent_grid = image_moments.shape[-1]
    with torch.no_grad():
        prompts = encode_prompts({"tokenizer": components["tokenizer"],
                                  "text_encoder": components["text_encoder"].eval()},
                                 settings.prompt, "sd15", torch.device("cpu"))
    widen_conv_in(unet, num_conditions=1)
    torch.manual_seed(settings.seed + 505)  # peft draws lora_A from the global generator: seed it
    add_control_lora(unet, ADAPTER, settings.preset, settings.rank, settings.conv_in_rank)
    if settings.init_weights:  # continue a saved adapter (its shape must be this one's)
        assign_lora_weights(unet, read_control_lora(settings.init_weights), ADAPTER,
                            origin=f"pretrain-adapter init_weights {settings.init_weights}")
    return train_adapter(unet, image_moments, condition_moments, latent_masks(masks, latent_grid),
                         vae.config.scaling_factor, prompts.prompt, prompts.empty, components["noise_scheduler"],
                         settings, checkpoints, state)


def _save_adapter(out_dir: str | Path, base: Path, unet: torch.nn.Module, log: list[float], settings: AdapterSettings,
                  checkpoints: Checkpoints, command: str | None) -> dict[str, Any]:
    """Write the adapter and its card to ``out_dir`` atomically, measuring its mask following on the staged folder
    (with ``settings.threads`` torch threads); the summary."""
    from hardgen.core.io import atomic_folder
    from hardgen.models.control_lora import save_control_lora

    seconds = checkpoints.seconds()
    tail = max(1, len(log) // 10)
    with atomic_folder(out_dir) as staging:
        save_control_lora(staging, unet, ADAPTER, base_model=base.as_posix(), preset=settings.preset,
                          condition_type=settings.condition, prediction_type="epsilon",
                          extra={"pretrained_by": "hardgen pretrain-adapter"})
        with torch_threads(settings.threads):
            measure = measure_mask_following(base, staging, settings)
        summary = {
            "out": str(out_dir), "complete": True, "base": base.as_posix(), "settings": dataclasses.asdict(settings),
            "loss_first": float(np.mean(log[:tail])), "loss": float(np.mean(log[-tail:])),
            "trainable_params": sum(p.numel() for p in unet.parameters() if p.requires_grad),
            "budget_steps": settings.steps, "wall_seconds": seconds, "resumed": checkpoints.previous_seconds > 0,
            "mask_following": measure, "device": "cpu",
        }
        (staging / "README.md").write_text(model_card(summary, command))
    return summary


def model_card(summary: dict[str, Any], command: str | None = None) -> str:
    """The ``README.md`` of the adapter folder (the measured wall time is the only line a rerun changes)."""
    s, m = summary["settings"], summary["mask_following"]
    v_weighted = s["loss_weighting"] == "v"
    lines = [
        f"# {Path(summary['out']).name}: the hardgen demo's {s['condition']} Control-LoRA",
        "",
        (f"A control-lora-v3 adapter (`pytorch_lora_weights.safetensors`) for the base `{summary['base']}`, "
        f"{s['condition']} conditions of"),
        "polyp masks, pre-trained by `hardgen.pretrain.adapter` so that the demo's plain Control-LoRA starts from it",
        "(`config/config.yaml`: `lora.init_weights`) and its samples put their polyp where the mask says.",
        "",
        (f"Made by `{command or 'hardgen pretrain-adapter'}` (`make tiny-sd` runs both stages after the base) with "
        f"seed {s['seed']} and"),
        (f"{s['threads']} torch threads on the CPU; the same command, seed, base and thread count give the same "
         "weights."),
        "",
        "## Training",
        (f"- Data: the base's pre-training pool ({s['images']} images of stream `[seed, 3, i]` with their masks), "
        f"{s['condition']} conditions"),
        (f"  ({s['canny_low']}/{s['canny_high']}) of the masks at {s['resolution']} px, VAE-encoded "
         "(posterior samples)."),
        (f"- Adapter: preset `{s['preset']}`, rank {s['rank']}, conv_in rank {s['conv_in_rank']} "
        f"({summary['trainable_params']:,} parameters); the base frozen."),
        *([f"- Continued from `{s['init_weights']}` (the first stage, same shapes; its own card has its budget)."]
          if s["init_weights"] else []),
        (f"- {s['steps']} steps of {s['batch']}, AdamW lr {s['lr']} ({s['warmup_steps']} warm-up steps, then cosine "
        "decay), DDPM epsilon MSE with"),
        (f"  the polyp's latent pixels weighted 1 + {s['mask_weight']} (renormalised per image), timesteps drawn "
        f"`{s['timesteps']}`,"),
        *([(f"  each image's error weighted min(1 + 1/SNR(t), {s['weighting_cap']:g}) (the v-prediction loss, "
           "capped; renormalised per batch),")] if v_weighted else []),
        f"  prompt \"{s['prompt']}\" (the empty prompt with p = {s['empty_prompt_prob']}).",
        "",
        "## Does the base with this adapter follow its masks?",
        "",
        (f"{s['heldout']} held-out masks (stream `[seed, 4, i]`), one sample each (UniPC, {s['sample_steps']} steps, "
        "guidance 1), measured by"),
        "`hardgen.scoring.mask_following` against the held-out real images of the same masks:",
        "",
        "| set | own mask | shuffled mask | margin_vs_real | dark corners |",
        "|---|---:|---:|---:|---:|",
        f"| real (held-out) | {m['real_own']:.4f} | {m['real_shuffled']:.4f} | 1.000 | {m['real_dark_corners']:.0%} |",
        (f"| base + adapter | {m['own']:.4f} | {m['shuffled']:.4f} | {m['margin_vs_real']:.3f} | "
        f"{m['dark_corners']:.0%} |"),
        "",
        "## Losses and budget",
        "",
        (f"{'Mask- and v-weighted' if v_weighted else 'Mask-weighted'} epsilon MSE: "
         f"{summary['loss_first']:.4f} over the first 10 % of steps, {summary['loss']:.4f} over the last 10 %."),
        *budget_and_settings(summary),
    ]
    return "\n".join(lines)


#: ``hardgen pretrain-adapter``: ``run(base, out_dir, settings, ...)``.
PRETRAINING = Pretraining("pretrain-adapter", AdapterSettings, CONFIG_FIELDS, pretrain_adapter)
