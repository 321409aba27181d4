"""Control-LoRA text-to-image pipelines for SD1.5 and SDXL with the standard diffusers call API.

They subclass ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (so ``from_pretrained``,
``load_lora_weights``, ``fuse_lora``, ``set_adapters``, offloading and the usual properties work) and take
every argument of the stock ``__call__`` that applies (``timesteps``, ``sigmas``, ``guidance_rescale``,
``callback_on_step_end``, ``cross_attention_kwargs``, …; SDXL also ``denoising_end`` and the negative
size/crop conditioning), plus the conditions: ``condition`` (alias ``image``), ``condition_scale`` (alias
``controlnet_conditioning_scale``) and ``control_guidance_start/end``, each a float or one value per
condition slot, as diffusers' multi-ControlNet pipelines take them. Adapter handling is in
:mod:`hardgen.models.control_lora.adapters`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    rescale_noise_cfg,
    retrieve_timesteps,
)
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput
from torch import nn

from hardgen.models.control_lora.adapters import ConditionSchedule, per_condition
from hardgen.models.control_lora.model import condition_count, latent_channels

ConditionImage = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[Any]
StepCallback = Callable[..., dict[str, Any]] | PipelineCallback | MultiPipelineCallbacks


def condition_posterior(vae: nn.Module, images_m11: torch.Tensor) -> DiagonalGaussianDistribution:
    """The VAE posterior of condition images in [-1, 1] (unscaled latent space).

    The encoder runs outside any autocast region, in the VAE's own dtype (an fp32 VAE stays fp32 under fp16/bf16
    autocast); an fp16 VAE is run in fp32 for this call because its encoder overflows, and its posterior stays fp32.
    """
    upcast = vae.dtype == torch.float16
    if upcast:
        vae.to(torch.float32)
    try:
        with torch.autocast(device_type=vae.device.type, enabled=False):
            return vae.encode(images_m11.to(device=vae.device, dtype=vae.dtype)).latent_dist
    finally:
        if upcast:
            vae.to(torch.float16)


def encode_condition(
    vae: nn.Module,
    images_m11: torch.Tensor,
    mode: str = "mode",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """VAE latents of condition images in [-1, 1], times ``scaling_factor`` (what conv_in's condition slot reads), in
    the VAE's dtype.

    ``mode="sample"`` draws from the posterior (:func:`condition_posterior`; the authors' training, as control-lora-v3);
    ``"mode"`` takes its mode (inference, and hardgen's training by default: ``lora.condition_latent``).
    """
    if mode not in ("sample", "mode"):
        raise ValueError(f"encode_condition: mode must be 'sample' or 'mode', got {mode!r}")
    original_dtype = vae.dtype
    dist = condition_posterior(vae, images_m11)
    latents = dist.sample(generator=generator) if mode == "sample" else dist.mode()
    return (latents * vae.config.scaling_factor).to(original_dtype)


@contextlib.contextmanager
def vae_upcast(vae: nn.Module) -> Iterator[None]:
    """Run an fp16 VAE whose config asks for it (``force_upcast``, as SD1.5's) in fp32 inside the block, a gradient
    taken inside it included (fp16 weights under fp32 activations would fail); cast back to fp16 after."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(torch.float16)


def decode_latents(vae: nn.Module, latents: torch.Tensor, generator: torch.Generator | None = None, *,
                   keep_autocast: bool = False) -> torch.Tensor:
    """The VAE's images in [-1, 1] of (scaled) latents: unscaled by ``latents_mean`` / ``latents_std`` where the VAE
    has them, else by ``scaling_factor``, and decoded in the VAE's own dtype, outside autocast unless
    ``keep_autocast`` (training's decode of x̂0 under its mixed precision)."""
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents)
        std = torch.tensor(std).view(shape).to(latents)
        latents = latents * std / vae.config.scaling_factor + mean
    else:
        latents = latents / vae.config.scaling_factor
    outside_autocast = torch.autocast(device_type=latents.device.type, enabled=False)
    with contextlib.nullcontext() if keep_autocast else outside_autocast:
        return vae.decode(latents.to(vae.dtype), return_dict=False, generator=generator)[0]


def encode_latents(vae: nn.Module, images_m11: torch.Tensor) -> torch.Tensor:
    """The (scaled) latents of images in [-1, 1], as the denoising loop holds them: the posterior's mode
    (:func:`condition_posterior`) scaled by ``latents_mean`` / ``latents_std`` where the VAE has them, else by
    ``scaling_factor`` (what :func:`decode_latents` undoes), in the VAE's dtype."""
    original_dtype = vae.dtype
    latents = condition_posterior(vae, images_m11).mode()
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, len(mean), 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents)
        std = torch.tensor(std).view(shape).to(latents)
        latents = (latents - mean) * vae.config.scaling_factor / std
    else:
        latents = latents * vae.config.scaling_factor
    return latents.to(original_dtype)


def decode_unit_images(vae: nn.Module, latents: torch.Tensor, *, keep_autocast: bool = False) -> torch.Tensor:
    """Latents (a predicted clean latent x̂0) -> float32 images in [0, 1] (:func:`decode_latents`): what the hardness
    and feedback judges read, in training and in mining / guidance alike."""
    return (decode_latents(vae, latents, keep_autocast=keep_autocast).float() / 2 + 0.5).clamp(0, 1)


def _as_image_batch(image: Any) -> Any:
    """Bring one condition item into a form ``VaeImageProcessor`` reads unambiguously.

    PIL images pass through. Arrays (HxW, HxWxC or BxHxWxC) and tensors (CxHxW or BxCxHxW) get a batch
    axis; uint8 values are scaled to [0, 1] because the processor treats arrays as floats in [0, 1]
    (float tensors in [-1, 1] are recognised as already normalised).
    """
    if isinstance(image, PIL.Image.Image):
        return image
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        return array[None] if array.ndim == 3 else array
    if isinstance(image, torch.Tensor):
        tensor = image.float() / 255.0 if image.dtype == torch.uint8 else image
        return tensor[None] if tensor.ndim == 3 else tensor
    raise ValueError(f"condition: unsupported image type {type(image).__name__}")


class _ControlLoraSampling:
    """What the SD1.5 and SDXL Control-LoRA pipelines share: arguments, conditions, the sampling loop."""

    # ------------------------------------------------------------------------------------- arguments
    @staticmethod
    def _aliases(condition: Any, image: Any, condition_scale: Any, controlnet_conditioning_scale: Any,
                 guess_mode: bool) -> tuple[Any, Any]:
        """diffusers' ControlNet names: ``image`` for ``condition``, ``controlnet_conditioning_scale`` for
        ``condition_scale``; giving both spellings is an error."""
        if condition is not None and image is not None:
            raise ValueError("condition / image: give the condition once (image= is diffusers' ControlNet name)")
        if condition_scale is not None and controlnet_conditioning_scale is not None:
            raise ValueError("condition_scale / controlnet_conditioning_scale: give the scale once")
        if guess_mode:
            raise ValueError("guess_mode: ControlNet's guess mode has no Control-LoRA counterpart")
        scale = condition_scale if condition_scale is not None else controlnet_conditioning_scale
        return (condition if condition is not None else image), (1.0 if scale is None else scale)

    def _call_conditions(self, condition: Any, image: Any, condition_scale: Any, controlnet_conditioning_scale: Any,
                         guess_mode: bool, height: int | None, width: int | None
                         ) -> tuple[list[Any], Any, int, int, int]:
        """A call's condition images (one entry per slot), scale, slot count and height, width (see :meth:`_aliases`,
        :meth:`_condition_images`, :meth:`_size`)."""
        condition, scale = self._aliases(condition, image, condition_scale, controlnet_conditioning_scale, guess_mode)
        n_slots = condition_count(self.unet)
        images = self._condition_images(condition, n_slots)
        height, width = self._size(images, height, width)
        return images, scale, n_slots, height, width

    def _begin_call(self, prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None, guidance_scale: float,
                    guidance_rescale: float, clip_skip: int | None, cross_attention_kwargs: dict[str, Any] | None
                    ) -> tuple[int, torch.device, float | None, dict | None]:
        """Set the call's guidance state; return the prompt batch size, the device and the split LoRA scale (see
        :meth:`_split_lora_scale`)."""
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        batch_size = (1 if isinstance(prompt, str) else len(prompt)) if prompt is not None else prompt_embeds.shape[0]
        return (batch_size, self._execution_device, *self._split_lora_scale(cross_attention_kwargs))

    def _condition_images(self, condition: Any, n_slots: int) -> list[Any]:
        """One entry per condition slot (each an image, a batch, or a list of images)."""
        if condition is None:
            raise ValueError("condition (or image): a condition image is required")
        if n_slots < 1:
            raise ValueError("the pipeline's UNet reads no condition; call widen_conv_in(pipe.unet) first")
        if n_slots == 1:
            return [condition]
        if not isinstance(condition, (list, tuple)) or len(condition) != n_slots:
            raise ValueError(f"condition: the UNet reads {n_slots} conditions; pass a list of {n_slots} images")
        return list(condition)

    def _size(self, images: list[Any], height: int | None, width: int | None) -> tuple[int, int]:
        """Missing height/width: the first condition's size, rounded down to a multiple of the VAE factor."""
        if height and width:
            return height, width
        first = images[0][0] if isinstance(images[0], (list, tuple)) else images[0]
        pixels = self._condition_processor().preprocess(_as_image_batch(first))
        return height or int(pixels.shape[-2]), width or int(pixels.shape[-1])

    def _condition_processor(self) -> VaeImageProcessor:
        return VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)

    def _schedule(self, scale: Any, start: Any, end: Any, n_slots: int, n_steps: int,
                  adapters: Sequence[str] | None, other_scale: float) -> ConditionSchedule:
        scales = per_condition(scale, n_slots, "condition_scale")
        starts = per_condition(start, n_slots, "control_guidance_start")
        ends = per_condition(end, n_slots, "control_guidance_end")
        for index, (s, e) in enumerate(zip(starts, ends)):
            if not 0.0 <= s <= e <= 1.0:
                raise ValueError(f"control_guidance_start/end: condition {index} has [{s}, {e}]; "
                                 f"need 0 <= start <= end <= 1")
        return ConditionSchedule(self.unet, scales, starts, ends, n_steps, adapters, other_scale)

    def _timesteps_and_schedule(self, num_inference_steps: int, device: torch.device, timesteps: list[int] | None,
                                sigmas: list[float] | None, scale: Any, start: Any, end: Any, n_slots: int,
                                adapters: Sequence[str] | None, lora_scale: float | None
                                ) -> tuple[torch.Tensor, int, ConditionSchedule]:
        """The scheduler's timesteps and step count, and the condition schedule over the full timesteps."""
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps,
                                                            sigmas)
        schedule = self._schedule(scale, start, end, n_slots, len(timesteps), adapters,
                                  1.0 if lora_scale is None else lora_scale)
        return timesteps, num_inference_steps, schedule

    def _timestep_cond(self, total: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """The guidance-scale embedding of a UNet with ``time_cond_proj_dim`` (None for any other UNet)."""
        if self.unet.config.time_cond_proj_dim is None:
            return None
        guidance = torch.tensor(self.guidance_scale - 1).repeat(total)
        return self.get_guidance_scale_embedding(
            guidance, embedding_dim=self.unet.config.time_cond_proj_dim
        ).to(device=device, dtype=dtype)

    @staticmethod
    def _split_lora_scale(cross_attention_kwargs: dict[str, Any] | None) -> tuple[float | None, dict | None]:
        """``cross_attention_kwargs["scale"]`` scales the non-condition LoRAs of the call (as in the stock
        pipeline, where it scales every LoRA); the condition adapters follow ``condition_scale`` alone."""
        if not cross_attention_kwargs or "scale" not in cross_attention_kwargs:
            return None, cross_attention_kwargs
        rest = {k: v for k, v in cross_attention_kwargs.items() if k != "scale"}
        return float(cross_attention_kwargs["scale"]), (rest or None)

    # ------------------------------------------------------------------------------------ conditions
    def _condition_latents(
        self, images: list[Any], height: int, width: int, batch_size: int, num_images_per_prompt: int,
        dtype: torch.dtype, device: torch.device,
    ) -> torch.Tensor:
        """VAE latents (``.mode()``) of every slot's condition, concatenated on channels, one row per image.

        Each distinct image object is preprocessed and encoded once, all in one VAE call; a single condition
        is repeated over the batch after encoding, ``batch_size`` conditions over ``num_images_per_prompt``.
        """
        processor = self._condition_processor()
        total = batch_size * num_images_per_prompt
        unique: dict[int, int] = {}
        pixels: list[torch.Tensor] = []
        slot_items: list[list[int]] = []
        for image in images:
            items = list(image) if isinstance(image, (list, tuple)) else [image]
            indices = []
            for item in items:
                if id(item) not in unique:
                    unique[id(item)] = len(pixels)
                    pixels.append(processor.preprocess(_as_image_batch(item), height=height, width=width))
                indices.append(unique[id(item)])
            slot_items.append(indices)
        encoded = encode_condition(self.vae, torch.cat(pixels).to(device), mode="mode").to(device=device, dtype=dtype)
        offsets = np.cumsum([0] + [p.shape[0] for p in pixels])
        per_slot = []
        for slot, indices in enumerate(slot_items):
            latents = torch.cat([encoded[offsets[i]: offsets[i + 1]] for i in indices])
            count = latents.shape[0]
            if count == 1:
                latents = latents.repeat(total, 1, 1, 1)
            elif count == batch_size:
                latents = latents.repeat_interleave(num_images_per_prompt, dim=0)
            elif count != total:
                raise ValueError(
                    f"condition {slot}: {count} images for {batch_size} prompt(s) × {num_images_per_prompt}"
                )
            per_slot.append(latents)
        return torch.cat(per_slot, dim=1)

    # ---------------------------------------------------------------------------------------- loop
    def _unet_kwargs(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The family's extra UNet arguments for one step (SDXL: pooled text embeds and time ids); each pipeline
        class below defines it, the shared loop only calls it."""
        raise NotImplementedError(f"{type(self).__name__} must define _unet_kwargs (a Control-LoRA pipeline family)")

    def _denoise(
        self,
        tensors: dict[str, torch.Tensor],
        timesteps: torch.Tensor,
        num_inference_steps: int,
        schedule: ConditionSchedule,
        extra_step_kwargs: dict[str, Any],
        callback_on_step_end: StepCallback | None,
        callback_inputs: Sequence[str],
    ) -> torch.Tensor:
        """The sampling loop: per-step condition adapter state, condition latents on the channel axis, CFG
        (read from the properties each step, so a CFG-cutoff callback works), guidance rescale, callbacks."""
        self._num_timesteps = len(timesteps)
        num_warmup = max(len(timesteps) - num_inference_steps * self.scheduler.order, 0)
        doubled: tuple[torch.Tensor, bool, torch.Tensor] | None = None
        with schedule, self.progress_bar(total=num_inference_steps) as progress:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                schedule.step(i)
                cfg, latents, cond = self.do_classifier_free_guidance, tensors["latents"], tensors["condition_latents"]
                if doubled is None or doubled[0] is not cond or doubled[1] != cfg:
                    doubled = (cond, cfg, torch.cat([cond, cond]) if cfg else cond)
                model_input = torch.cat([latents] * 2) if cfg else latents
                if hasattr(self.scheduler, "scale_model_input"):
                    model_input = self.scheduler.scale_model_input(model_input, t)
                model_input = torch.cat([model_input, doubled[2]], dim=1)
                noise_pred = self.unet(model_input, t, return_dict=False, **self._unet_kwargs(tensors))[0]
                if cfg:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
                    if self.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale=self.guidance_rescale)
                tensors["latents"] = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs,
                                                         return_dict=False)[0]
                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_inputs})
                    tensors.update({k: v for k, v in outputs.items() if k in tensors})
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup and (i + 1) % self.scheduler.order == 0):
                    progress.update()
        return tensors["latents"]

    def _decode(self, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """VAE decode outside autocast; an fp16 VAE that asks for it (``force_upcast``) decodes in fp32."""
        with vae_upcast(self.vae):
            return decode_latents(self.vae, latents, generator)


class ControlLoraPipeline(_ControlLoraSampling, StableDiffusionPipeline):
    """Stable Diffusion (1.x) text-to-image with Control-LoRA conditions on a widened stock UNet.

    Load the base with ``ControlLoraPipeline.from_pretrained(base)``, then ``widen_conv_in(pipe.unet, N)``
    and :func:`load_control_lora` (or stock ``pipe.load_lora_weights(folder)``, or reuse a training UNet).
    Each call VAE-encodes the condition(s) once, concatenates them to the latents every step and runs each
    condition adapter at its slot's ``condition_scale`` inside its ``control_guidance_start..end`` window
    (outside it the adapter is off: exactly the base UNet plus any other LoRA).
    """

    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "condition_latents"]

    def _unet_kwargs(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"encoder_hidden_states": tensors["prompt_embeds"], **self._static_unet_kwargs}

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        condition: ConditionImage | None = None,
        condition_scale: float | Sequence[float] | None = None,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        condition_adapters: Sequence[str] | None = None,
        image: ConditionImage | None = None,
        controlnet_conditioning_scale: float | Sequence[float] | None = None,
        guess_mode: bool = False,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Generate images; ``condition`` (or ``image``) is one image (or batch) per condition slot, a list when N > 1.

        ``condition_scale`` (or ``controlnet_conditioning_scale``), ``control_guidance_start`` and
        ``control_guidance_end``: a float or one value per condition slot; they apply to the condition
        adapters of that slot only. ``condition_adapters`` picks the condition adapters of this call (default:
        the active ones). Other LoRAs keep their weight, times ``cross_attention_kwargs["scale"]``. Other
        arguments as in ``StableDiffusionPipeline``; ``callback_on_step_end_tensor_inputs`` may also name
        ``condition_latents`` (the encoded conditions, not doubled for CFG).
        """
        images, scale, n_slots, height, width = self._call_conditions(
            condition, image, condition_scale, controlnet_conditioning_scale, guess_mode, height, width)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          None, None, callback_on_step_end_tensor_inputs)
        batch_size, device, lora_scale, unet_attention_kwargs = self._begin_call(
            prompt, prompt_embeds, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        timesteps, num_inference_steps, schedule = self._timesteps_and_schedule(
            num_inference_steps, device, timesteps, sigmas, scale, control_guidance_start, control_guidance_end,
            n_slots, condition_adapters, lora_scale)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale if self.text_encoder is not None else None, clip_skip=self.clip_skip,
        )
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt, latent_channels(self.unet), height, width, prompt_embeds.dtype,
            device, generator, latents,
        )
        condition_latents = self._condition_latents(images, height, width, batch_size, num_images_per_prompt,
                                                    prompt_embeds.dtype, device)
        timestep_cond = self._timestep_cond(batch_size * num_images_per_prompt, device, latents.dtype)
        self._static_unet_kwargs = {"timestep_cond": timestep_cond, "cross_attention_kwargs": unet_attention_kwargs}
        tensors = {"latents": latents, "prompt_embeds": prompt_embeds,
                   "negative_prompt_embeds": negative_prompt_embeds, "condition_latents": condition_latents}
        latents = self._denoise(tensors, timesteps, num_inference_steps, schedule,
                                self.prepare_extra_step_kwargs(generator, eta), callback_on_step_end,
                                callback_on_step_end_tensor_inputs)
        if output_type == "latent":
            image, nsfw = latents, None
        else:
            image = self._decode(latents, generator)
            image, nsfw = self.run_safety_checker(image, device, tensors["prompt_embeds"].dtype)
            denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, nsfw
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)


class ControlLoraXLPipeline(_ControlLoraSampling, StableDiffusionXLPipeline):
    """SDXL text-to-image with Control-LoRA conditions (time ids and pooled text embeds added)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "condition_latents"]

    def _unet_kwargs(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {
            "encoder_hidden_states": tensors["prompt_embeds"],
            "added_cond_kwargs": {"text_embeds": tensors["add_text_embeds"], "time_ids": tensors["add_time_ids"]},
            **self._static_unet_kwargs,
        }

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        condition: ConditionImage | None = None,
        condition_scale: float | Sequence[float] | None = None,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        negative_original_size: tuple[int, int] | None = None,
        negative_crops_coords_top_left: tuple[int, int] = (0, 0),
        negative_target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        condition_adapters: Sequence[str] | None = None,
        image: ConditionImage | None = None,
        controlnet_conditioning_scale: float | Sequence[float] | None = None,
        guess_mode: bool = False,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Generate SDXL images under Control-LoRA conditions; arguments as in :class:`ControlLoraPipeline`
        plus SDXL's ``prompt_2``, pooled embeds, ``denoising_end`` and (negative) micro-conditioning sizes."""
        images, scale, n_slots, height, width = self._call_conditions(
            condition, image, condition_scale, controlnet_conditioning_scale, guess_mode, height, width)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        original_size = tuple(original_size or (height, width))
        target_size = tuple(target_size or (height, width))
        self.check_inputs(prompt, prompt_2, height, width, None, negative_prompt, negative_prompt_2, prompt_embeds,
                          negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, None, None,
                          callback_on_step_end_tensor_inputs)
        self._denoising_end = denoising_end
        batch_size, device, lora_scale, unet_attention_kwargs = self._begin_call(
            prompt, prompt_embeds, guidance_scale, guidance_rescale, clip_skip, cross_attention_kwargs)
        # windows refer to the full schedule, as in diffusers' SDXL ControlNet pipeline
        timesteps, num_inference_steps, schedule = self._timesteps_and_schedule(
            num_inference_steps, device, timesteps, sigmas, scale, control_guidance_start, control_guidance_end,
            n_slots, condition_adapters, lora_scale)
        prompt_embeds, negative_prompt_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=self.do_classifier_free_guidance, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale if self.text_encoder is not None or self.text_encoder_2 is not None else None,
            clip_skip=self.clip_skip,
        )
        total = batch_size * num_images_per_prompt
        latents = self.prepare_latents(total, latent_channels(self.unet), height, width, prompt_embeds.dtype, device,
                                       generator, latents)
        projection_dim = (int(pooled.shape[-1]) if self.text_encoder_2 is None
                          else self.text_encoder_2.config.projection_dim)
        add_time_ids = self._get_add_time_ids(original_size, tuple(crops_coords_top_left), target_size,
                                              dtype=prompt_embeds.dtype, text_encoder_projection_dim=projection_dim)
        if negative_original_size is not None and negative_target_size is not None:
            negative_time_ids = self._get_add_time_ids(
                tuple(negative_original_size), tuple(negative_crops_coords_top_left), tuple(negative_target_size),
                dtype=prompt_embeds.dtype, text_encoder_projection_dim=projection_dim,
            )
        else:
            negative_time_ids = add_time_ids
        add_text_embeds, add_time_ids = pooled, add_time_ids.repeat(total, 1)
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
            add_text_embeds = torch.cat([negative_pooled, add_text_embeds])
            add_time_ids = torch.cat([negative_time_ids.repeat(total, 1), add_time_ids])
        condition_latents = self._condition_latents(images, height, width, batch_size, num_images_per_prompt,
                                                    prompt_embeds.dtype, device)
        if self.denoising_end is not None and isinstance(self.denoising_end, float) and 0 < self.denoising_end < 1:
            train_steps = self.scheduler.config.num_train_timesteps
            cutoff = round(train_steps - self.denoising_end * train_steps)
            num_inference_steps = len([t for t in timesteps if t >= cutoff])
            timesteps = timesteps[:num_inference_steps]
        timestep_cond = self._timestep_cond(total, device, latents.dtype)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        self._static_unet_kwargs = {"timestep_cond": timestep_cond, "cross_attention_kwargs": unet_attention_kwargs}
        tensors = {"latents": latents, "prompt_embeds": prompt_embeds.to(device),
                   "add_text_embeds": add_text_embeds.to(device), "add_time_ids": add_time_ids.to(device),
                   "condition_latents": condition_latents}
        latents = self._denoise(tensors, timesteps, num_inference_steps, schedule,
                                self.prepare_extra_step_kwargs(generator, eta), callback_on_step_end,
                                callback_on_step_end_tensor_inputs)
        if output_type == "latent":
            image = latents
        else:
            image = self._decode(latents, generator)
            if getattr(self, "watermark", None) is not None:
                image = self.watermark.apply_watermark(image)
            image = self.image_processor.postprocess(image, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)
