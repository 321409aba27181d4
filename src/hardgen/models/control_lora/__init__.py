"""Control-LoRA (control-lora-v3 design) on the public diffusers/peft APIs and a stock ``UNet2DConditionModel``.

The condition image is VAE-encoded and concatenated to the noisy latent on the channel axis; the UNet's
``conv_in`` is widened with zero weights to read it, and only peft LoRA adapters are trained (a higher rank
on ``conv_in``, which is the only layer that sees the condition channels).

Parts:

* :mod:`~hardgen.models.control_lora.model` — widening, presets, the peft config, PiSSA init, slot records;
* :mod:`~hardgen.models.control_lora.files` — the file format (header metadata, model card), reading from a file,
  folder or hub id, loading into condition slots, in-place assignment, summaries;
* :mod:`~hardgen.models.control_lora.adapters` — condition adapters vs other LoRAs, per-slot scales and guidance
  windows, fusing;
* :mod:`~hardgen.models.control_lora.pipeline` — ``condition_posterior`` / ``encode_condition``, ``decode_latents`` /
  ``decode_unit_images`` (``vae_upcast``) and the SD1.5 / SDXL pipelines.

Channel bookkeeping (a deliberate fix of the original): control-lora-v3 reports ``config.in_channels = 4``
while its ``conv_in`` has ``4·(1+N)`` inputs, by writing to diffusers' frozen config through a private
quirk; a saved UNet then reloads inconsistently. Here :func:`widen_conv_in` records the true width with the
public ``register_to_config(in_channels=4·(1+N))`` (as diffusers' instruct-pix2pix script does), so
``save_pretrained``/``from_pretrained`` round-trip. The number of *noise* channels is never stored
separately: it is ``unet.config.out_channels`` (:func:`latent_channels`), which widening leaves at 4, and the
number of condition slots is ``in_channels / out_channels - 1`` (:func:`condition_count`).

Typical use::

    pipe = ControlLoraPipeline.from_pretrained(base)
    widen_conv_in(pipe.unet, 2)
    load_control_lora(pipe.unet, ["seg-lora/", "depth-lora/"], ["seg", "depth"])   # slots 0 and 1
    pipe.load_lora_weights(style_file, adapter_name="style")                       # any other LoRA
    pipe.set_adapters(["seg", "depth", "style"], [1.0, 1.0, 0.7])
    images = pipe(prompt, image=[seg, depth], controlnet_conditioning_scale=[1.0, 0.5],
                  control_guidance_end=[1.0, 0.6]).images
    fuse_control_lora(pipe.unet)          # fixed weights: merge once, then call at scale 1 / window [0, 1]
"""

from hardgen.models.control_lora.adapters import (
    ConditionSchedule,
    active_condition_adapters,
    condition_slots,
    fuse_control_lora,
    fused_adapters,
    set_condition_scales,
    unfuse_control_lora,
)
from hardgen.models.control_lora.files import (
    LORA_ADAPTER_METADATA_KEY,
    LORA_WEIGHT_NAME,
    METADATA_KEY,
    MODEL_CARD_NAME,
    UNET_PREFIX,
    assign_lora_weights,
    control_lora_state_dict,
    load_control_lora,
    lora_summary,
    lora_summary_from_file,
    read_control_lora,
    read_control_lora_metadata,
    resolve_lora_file,
    save_control_lora,
    write_model_card,
)
from hardgen.models.control_lora.model import (
    PRESETS,
    add_control_lora,
    condition_count,
    latent_channels,
    make_lora_config,
    pissa_initial_factors,
    target_modules,
    widen_conv_in,
)
from hardgen.models.control_lora.pipeline import (
    ConditionImage,
    ControlLoraPipeline,
    ControlLoraXLPipeline,
    condition_posterior,
    decode_latents,
    decode_unit_images,
    encode_condition,
    encode_latents,
    vae_upcast,
)

__all__ = [
    "LORA_ADAPTER_METADATA_KEY",
    "LORA_WEIGHT_NAME",
    "METADATA_KEY",
    "MODEL_CARD_NAME",
    "PRESETS",
    "UNET_PREFIX",
    "ConditionImage",
    "ConditionSchedule",
    "ControlLoraPipeline",
    "ControlLoraXLPipeline",
    "active_condition_adapters",
    "add_control_lora",
    "assign_lora_weights",
    "condition_count",
    "condition_posterior",
    "condition_slots",
    "control_lora_state_dict",
    "decode_latents",
    "decode_unit_images",
    "encode_condition",
    "encode_latents",
    "fuse_control_lora",
    "fused_adapters",
    "latent_channels",
    "load_control_lora",
    "lora_summary",
    "lora_summary_from_file",
    "make_lora_config",
    "pissa_initial_factors",
    "read_control_lora",
    "read_control_lora_metadata",
    "resolve_lora_file",
    "save_control_lora",
    "set_condition_scales",
    "target_modules",
    "unfuse_control_lora",
    "vae_upcast",
    "widen_conv_in",
    "write_model_card",
]
