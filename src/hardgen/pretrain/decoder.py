"""Fine-tune the demo base's VAE decoder, the encoder frozen (``hardgen pretrain-decoder``, the second step of
``make tiny-sd``).

Why: the base's VAE trains for 400 steps, enough for a good PSNR (29 dB held-out) but not for the polyp's tint, a
±10 % colour shift that the L1 loss learns late. Measured on held-out images, decode(encode(x)) kept only 0.18 of
the real images' mask-following margin (:mod:`hardgen.scoring.mask_following`), while the UNet with the demo's mask
adapter
puts the tint where the mask says in its high-noise x̂0 (1.9 × the real margin at t = 999): the samples lost it in
the decoder, not in the diffusion model.

How: Stable Diffusion's own fix for its VAE (sd-vae-ft-mse: "only the decoder was fine-tuned", so every UNet
trained on the old latents still works). The decoder and ``post_quant_conv`` train on the base's pool, with the
base VAE's objective without its KL (the encoder, hence the posterior, is frozen): L1 between the image and the
decoded posterior sample, one-cycle learning rate, gradients clipped. The latent space does not move, so the UNet,
the scaling factor and every adapter trained on the base keep their meaning; only decoded pixels change.

The output is the base folder with the new ``vae/`` (every other file copied unchanged) and the base's model card
with a section appended: the steps, the wall time, and held-out reconstruction PSNR and mask-following margin before
and after. Seeded and resumable like the other pre-trainings (:class:`hardgen.pretrain.tiny_sd.Checkpoints`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
    psnr,
    raise_problems,
    reconstructions,
    render_pool,
    to_model_range,
    torch_threads,
)

LOG = logging.getLogger("hardgen.pretrain.decoder")
#: The fields of the base's settings this stage reads from the workflow config (resolution and the demo's sizes).
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    name: BASE_CONFIG_FIELDS[name] for name in ("resolution", "min_size", "max_size")
}
CARD_SECTION = "## Decoder fine-tuning"


@dataclass(frozen=True)
class DecoderSettings:
    """Every knob of the decoder fine-tuning; the defaults made the shipped ``resources/tiny-sd-polyp``'s VAE."""

    seed: int = 0
    images: int = 2000  # the base's pre-training pool (same renderer stream)
    heldout: int = 144  # held-out images and masks (stream [seed, 4, i]) for the card's PSNR and margin
    resolution: int = 64  # model.resolution
    min_size: int = 72  # data.demo.min_size / max_size
    max_size: int = 112
    steps: int = 1500
    batch: int = 8
    lr: float = 1e-3
    max_grad_norm: float = 1.0
    threads: int = 2

    def problems(self) -> list[str]:
        """Every invalid setting, named as its field (the CLI flag is the same name with dashes)."""
        problems = bound_problems(self, at_least_one=("images", "steps", "batch", "threads"),
                                  positive=("lr", "max_grad_norm"), non_negative=("seed",))
        if self.heldout < 2:
            problems.append(f"heldout must be >= 2 (got {self.heldout}): the measure compares against other masks")
        return problems + image_problems(self)

    def check(self) -> None:
        """Raise ``ValueError`` listing every problem (before any slow work starts)."""
        raise_problems("pretrain-decoder", self.problems())


def decoder_parameters(vae: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters this stage trains: the decoder's and ``post_quant_conv``'s (what turns a latent into pixels)."""
    parts = [vae.decoder] + ([vae.post_quant_conv] if getattr(vae, "post_quant_conv", None) is not None else [])
    return [p for part in parts for p in part.parameters()]


def train_decoder(vae: torch.nn.Module, pixels: torch.Tensor, moments: torch.Tensor, settings: DecoderSettings,
                  checkpoints: Checkpoints | None = None, state: dict[str, Any] | None = None) -> list[float]:
    """Train the decoder of ``vae`` in place to decode posterior samples of ``moments`` (the frozen encoder's, of
    ``pixels`` in [-1, 1]) back to ``pixels``; return the per-step L1.

    Each step draws images and one latent from each posterior (as the base's VAE and UNet trained); loss = mean
    ``|x - decode(z)|``. AdamW, one-cycle learning rate (short warm-up, cosine decay, as the base's VAE), gradients
    clipped. Only :func:`decoder_parameters` change. ``checkpoints`` / ``state`` as in
    :func:`hardgen.pretrain.tiny_sd.train_vae` (the state holds the decoder's weights only).
    """
    s = settings
    vae.requires_grad_(False)
    params = decoder_parameters(vae)
    for p in params:
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(s.seed + 606)
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, s.lr, total_steps=s.steps, pct_start=0.05)
    vae.train()
    training = TrainingState("decoder", vae, optimizer, schedule, generator, trainable_only=True)
    log: list[float] = training.restore(state, float)

    for step in tqdm(range(len(log), s.steps), desc="decoder", unit="step", initial=len(log), total=s.steps):
        index = torch.randint(0, len(pixels), (s.batch,), generator=generator)
        latents = posterior_sample(moments[index], generator)
        loss = (vae.decode(latents).sample - pixels[index]).abs().mean()
        optimiser_step(loss, vae, optimizer, schedule, s.max_grad_norm, "decoder", step)
        log.append(float(loss.detach()))
        if checkpoints is not None:
            checkpoints.tick(step + 1, lambda: training.snapshot(log))
    vae.eval().requires_grad_(False)
    return log


@torch.no_grad()
def reconstruction_measure(vae: torch.nn.Module, images: np.ndarray, masks: np.ndarray, seed: int) -> dict[str, float]:
    """Held-out PSNR and the mask-following row of ``decode(encode(x).mode())`` against the images themselves:
    how much of the real images' own-vs-shuffled margin (:mod:`hardgen.scoring.mask_following`) the VAE keeps."""
    from hardgen.models.sampling import unit_to_uint8
    from hardgen.scoring.mask_following import mask_following_table, measure_rows

    recon = reconstructions(vae, images)
    pixels = unit_to_uint8(((recon + 1) / 2).permute(0, 2, 3, 1).numpy())
    table = mask_following_table((list(images), list(masks)), {"recon": (list(pixels), list(masks))}, seed=seed)
    row = measure_rows(table).loc["recon"]  # the cue's row
    return {"psnr": float(psnr(images, recon).mean()), "margin_vs_real": float(row["margin_vs_real"]),
            "dark_corners": float(row["dark_corners"])}


def _check_folders(base: Path, out_dir: Path) -> None:
    """Raise unless ``base`` is a diffusers SD folder and ``out_dir`` lies outside it (and it outside ``out_dir``)."""
    if not (base / "vae").is_dir() or not (base / "unet").is_dir():
        raise FileNotFoundError(f"{base}: not a diffusers Stable Diffusion folder (unet/ and vae/ expected)")
    if out_dir.resolve() == base.resolve():
        raise ValueError(f"pretrain-decoder: --out {out_dir} is the base itself; write elsewhere (a rerun would "
                         "fine-tune the fine-tuned decoder)")
    if out_dir.resolve().is_relative_to(base.resolve()) or base.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"pretrain-decoder: --out {out_dir} and --base {base} are inside one another; the output "
                         "replaces its folder whole")


def _base_card(base: Path) -> str:
    """The base's ``README.md`` ("" without one)."""
    return (base / "README.md").read_text() if (base / "README.md").is_file() else ""


def _save_base_with_decoder(base: Path, out_dir: Path, vae: torch.nn.Module, card: str) -> None:
    """Write ``out_dir`` atomically: every file of ``base`` but ``vae/`` and the card, ``vae`` with the base's VAE
    config byte for byte, and ``card`` as ``README.md``."""
    from hardgen.core.io import atomic_folder

    with atomic_folder(out_dir) as staging:
        shutil.copytree(base, staging, dirs_exist_ok=True,  # all but the top-level vae/ and card
                        ignore=lambda folder, names: [n for n in names if Path(folder) == base
                                                      and n in ("vae", "README.md")])
        vae.save_pretrained(staging / "vae", safe_serialization=True)
        # the decoder changes no setting: keep the base's config byte for byte (from_pretrained added its own path)
        shutil.copyfile(base / "vae" / "config.json", staging / "vae" / "config.json")
        (staging / "README.md").write_text(card)


def pretrain_decoder(
    base: str | Path,
    out_dir: str | Path,
    settings: DecoderSettings = DecoderSettings(),
    command: str | None = None,
    checkpointing: CheckpointOptions = CheckpointOptions(),
) -> dict[str, Any]:
    """Fine-tune the VAE decoder of ``base`` (a diffusers SD folder) and save the base with it to ``out_dir``.

    ``out_dir`` (written atomically; it must not be ``base``: a rerun would fine-tune twice) gets every file of
    ``base`` but ``vae/`` unchanged, the new ``vae/`` weights (safetensors; its ``config.json`` is the base's) and
    ``README.md``: the base's card with a section on this stage. Checkpoints, resuming and early stops as
    :func:`hardgen.pretrain.tiny_sd.pretrain_tiny_sd` (the fingerprint covers the settings and the base's files).
    Returns a summary.
    """
    from diffusers import AutoencoderKL

    from hardgen.core.io import folder_digests
    from hardgen.data.demo import HELDOUT_STREAM, PRETRAIN_STREAM

    settings.check()
    base, out_dir = Path(base), Path(out_dir)
    _check_folders(base, out_dir)
    checkpointing.check()
    try:
        with torch_threads(settings.threads):
            vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32).eval()
            fingerprint = {"settings": dataclasses.asdict(settings),
                           "base": folder_digests(base, skip_names=("README.md",))}
            checkpoints = checkpointing.open(out_dir, fingerprint)
            state = checkpoints.load()
            images, _ = render_pool(settings, settings.images, PRETRAIN_STREAM)
            heldout, heldout_masks = render_pool(settings, settings.heldout, HELDOUT_STREAM)
            before = reconstruction_measure(vae, heldout, heldout_masks, settings.seed)
            pixels = to_model_range(images)
            with torch.no_grad():
                moments = latent_moments(vae, pixels)
            log = train_decoder(vae, pixels, moments, settings, checkpoints, state)
            after = reconstruction_measure(vae, heldout, heldout_masks, settings.seed)
    except PretrainStopped as stopped:
        LOG.info("%s", stopped)
        return checkpoints.stopped_summary(out_dir, settings.steps)

    tail = max(1, len(log) // 10)
    summary = {
        "out": str(out_dir), "complete": True, "base": base.as_posix(), "settings": dataclasses.asdict(settings),
        "l1_first": float(np.mean(log[:tail])), "l1": float(np.mean(log[-tail:])),
        "trainable_params": sum(p.numel() for p in decoder_parameters(vae)),
        "before": before, "after": after, "budget_steps": settings.steps, "wall_seconds": checkpoints.seconds(),
        "resumed": checkpoints.previous_seconds > 0, "device": "cpu",
    }
    _save_base_with_decoder(base, out_dir, vae, card_with_section(_base_card(base), summary, command))
    checkpoints.clear()
    LOG.info("base with the fine-tuned decoder saved to %s: %s", out_dir, json.dumps(summary))
    return summary


def card_with_section(base_card: str, summary: dict[str, Any], command: str | None = None) -> str:
    """The base's model card with this stage's section appended (the measured wall time is the only line a rerun
    changes). A base that was fine-tuned before keeps its section: each one records its own step."""
    s, before, after = summary["settings"], summary["before"], summary["after"]
    lines = [
        *([base_card.rstrip("\n"), ""] if base_card.strip() else []),
        CARD_SECTION,
        "",
        (f"Then `{command or 'hardgen pretrain-decoder'}` fine-tuned the VAE's decoder (and `post_quant_conv`, "
         f"{summary['trainable_params']:,} parameters)"),
        ("with the encoder frozen, as Stable Diffusion's sd-vae-ft-mse was: the latent space does not move, so the "
         "UNet,"),
        "the scaling factor and any adapter trained on the latents keep their meaning. The base's VAE had learned the",
        "mucosa but not the polyp's faint tint, so its decoded samples lost the mask's colour.",
        "",
        (f"- {s['steps']} steps of {s['batch']} whole {s['resolution']} px images of the pool "
         f"({s['images']} images), L1 of decode(posterior sample), AdamW lr {s['lr']}"),
        (f"  (one-cycle); L1 {summary['l1_first']:.4f} over the first 10 % of steps, {summary['l1']:.4f} over the "
         "last 10 %."),
        (f"- {s['heldout']} held-out images (stream `[seed, 4, i]`), decode(encode(x)) against x, with the "
         "mask-following measure of `hardgen.scoring.mask_following`:"),
        "",
        "| decoder | PSNR | margin_vs_real | dark corners |",
        "|---|---:|---:|---:|",
        (f"| the base's | {before['psnr']:.2f} dB | {before['margin_vs_real']:.3f} | "
         f"{before['dark_corners']:.0%} |"),
        (f"| fine-tuned | {after['psnr']:.2f} dB | {after['margin_vs_real']:.3f} | "
         f"{after['dark_corners']:.0%} |"),
        "",
        *budget_and_settings(summary),
    ]
    return "\n".join(lines)


#: ``hardgen pretrain-decoder``: ``run(base, out_dir, settings, ...)``.
PRETRAINING = Pretraining("pretrain-decoder", DecoderSettings, CONFIG_FIELDS, pretrain_decoder)
