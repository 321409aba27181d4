"""Inpainting with a Control-LoRA on a stock (4-channel) UNet: the lesion drawn into a real frame, the frame kept.

No inpainting UNet is needed (any base: tiny, SD1.5, SDXL; any trained Control-LoRA), and the mask stays the
Control-LoRA's condition. Two steps keep the real frame outside the region redrawn (the lesion's mask dilated by
``generation.inpaint.dilate`` px, :func:`hardgen.data.placement.lesion_region`):

1. **Known-region latent blending at every step** (:func:`blending_callback`): after each sampler step the latents
   outside the region are replaced by the frame's latents noised to the next timestep with the sample's own initial
   noise, ``latents = (1 − m) · add_noise(frame_latents, noise, t_next) + m · latents`` (the frame's clean latents after
   the last step). This is how diffusers' ``StableDiffusionControlNetInpaintPipeline`` serves a non-inpainting
   (4-channel) UNet (``init_latents_proper = scheduler.add_noise(image_latents, noise, t_next)``,
   ``latents = (1 - init_mask) * init_latents_proper + init_mask * latents``), itself Blended Latent Diffusion
   (Avrahami, Fried, Lischinski, ACM TOG 42(4), 2023). The latent mask ``m`` is the region max-pooled to the latent
   grid (:func:`latent_mask`): a latent cell is redrawn when any of its pixels is (diffusers' nearest-neighbour
   resize would drop a lesion smaller than a cell). It runs through the pipelines' public ``callback_on_step_end``
   and the scheduler's public ``add_noise``; the initial latents are the sample's own noise, passed as ``latents``.
2. **A feathered pixel composite** (:func:`composite`): the decoded sample inside the region, the frame outside it,
   the weight ramping from 0 at the region's border to 1 at ``generation.inpaint.feather`` px inside it (and 1 on the
   lesion itself, :func:`feathered_alpha`), so outside the region the sample *is* the frame, byte for byte (the VAE's
   reconstruction of the frame never reaches it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor

from hardgen.models.control_lora import encode_latents, latent_channels, vae_upcast
from hardgen.models.sampling import RenderInto, Sampling, unit_to_uint8


# ---------------------------------------------------------------------------------------------- pixels
def feathered_alpha(region: np.ndarray, lesion: np.ndarray, feather: int) -> np.ndarray:
    """The composite's weight of the generated image (float32 HxW in [0, 1]): exactly 0 outside ``region``, rising
    with the distance to its border (a pixel at distance d inside: min(1, d / ``feather``)), 1 on ``lesion``; 0 =
    a hard cut (1 on the whole region)."""
    region = np.asarray(region, dtype=bool)
    if feather < 0:
        raise ValueError(f"generation.inpaint.feather must be >= 0, got {feather}")
    if feather == 0:
        alpha = region.astype(np.float32)
    else:
        # distance of each region pixel to the nearest pixel outside it (the image's edge is not a border)
        padded = np.pad(region, 1, mode="edge").astype(np.uint8)
        distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        alpha = np.clip(distance / float(feather), 0.0, 1.0).astype(np.float32)
        alpha[~region] = 0.0
    alpha[np.asarray(lesion, dtype=bool)] = 1.0
    return alpha


def composite(generated: np.ndarray, frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha`` · generated + (1 − alpha) · frame, rounded to uint8; where ``alpha`` is 0 the frame's own bytes."""
    generated, frame = np.asarray(generated), np.asarray(frame)
    if generated.shape != frame.shape or frame.dtype != np.uint8:
        raise ValueError(f"composite: generated {generated.dtype} {generated.shape} and frame {frame.dtype} "
                         f"{frame.shape} must be uint8 images of one size")
    weight = np.asarray(alpha, dtype=np.float64)[..., None]
    blended = (weight * generated + (1.0 - weight) * frame).round().clip(0, 255).astype(np.uint8)
    return np.where(weight > 0, blended, frame)


# ---------------------------------------------------------------------------------------------- latents
def latent_mask(regions: Sequence[np.ndarray], size: tuple[int, int], device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, h, w) in {0, 1}: the regions max-pooled to the latent grid ``size`` (1 = redrawn)."""
    stacked = torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in regions]))[:, None]
    return F.adaptive_max_pool2d(stacked, size).to(device=device, dtype=dtype)


def frame_latents(vae: Any, frames: Sequence[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The frames' (scaled) latents (:func:`hardgen.models.control_lora.encode_latents` of uint8 RGB HxWx3 frames)."""
    pixels = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode(), vae_upcast(vae):
        latents = encode_latents(vae, pixels.to(device))
    return latents.to(device=device, dtype=dtype)


def blending_callback(known: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor
                      ) -> Callable[..., dict[str, torch.Tensor]]:
    """``callback_on_step_end`` of the known-region blending (module doc, step 1): after step ``i`` the latents where
    ``mask`` is 0 become ``known`` noised to ``timesteps[i + 1]`` with ``noise`` (``known`` itself after the last)."""

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        latents = tensors["latents"]
        timesteps = pipe.scheduler.timesteps
        proper = known
        if step + 1 < len(timesteps):
            proper = pipe.scheduler.add_noise(known, noise, timesteps[step + 1:step + 2])
        proper, weight = proper.to(latents), mask.to(latents)
        return {"latents": (1 - weight) * proper + weight * latents}

    return callback


def inpaint_renderer(pipe: Any, sampling: Sampling, feather: int) -> RenderInto:
    """A :data:`~hardgen.models.sampling.RenderInto`: each sample's lesion drawn into its frame by ``pipe`` (any
    Control-LoRA pipeline) with the known-region blending at every step, then the feathered composite (module doc).

    The initial noise of a sample is drawn from its generator exactly as the pipeline draws it (the plain sample's
    noise of the same seed) and handed to the pipeline as ``latents``; the frames are VAE-encoded once per batch."""
    if feather < 0:
        raise ValueError(f"generation.inpaint.feather must be >= 0, got {feather}")

    def render(condition_images: list[np.ndarray], generators: list[torch.Generator], frames: list[np.ndarray],
               regions: list[np.ndarray], lesions: list[np.ndarray]) -> np.ndarray:
        if not len(condition_images) == len(generators) == len(frames) == len(regions) == len(lesions):
            raise ValueError("inpainting: one condition, generator, frame, region and lesion per sample")
        side = sampling.resolution // pipe.vae_scale_factor
        dtype = pipe.unet.dtype
        shape = (len(frames), latent_channels(pipe.unet), side, side)
        noise = randn_tensor(shape, generator=generators, device=pipe.device, dtype=dtype)
        known = frame_latents(pipe.vae, frames, pipe.device, dtype)
        mask = latent_mask(regions, (side, side), pipe.device, dtype)
        with torch.inference_mode():
            result = sampling(pipe, condition_images, generators, latents=noise,
                              callback_on_step_end=blending_callback(known, noise, mask))
        generated = unit_to_uint8(result.images)
        return np.stack([composite(image, frame, feathered_alpha(region, lesion, feather))
                         for image, frame, region, lesion in zip(generated, frames, regions, lesions, strict=True)])

    return render

