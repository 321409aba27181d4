"""Control-LoRA (control-lora-v3 design) on the public diffusers/peft APIs and a stock ``UNet2DConditionModel``.

The condition image is VAE-encoded and concatenated to the noisy latent on the channel axis; the UNet's
``conv_in`` is widened with zero weights to read it, and only peft LoRA adapters are trained (a higher rank
on ``conv_in``, which is the only layer that sees the condition channels).

Channel bookkeeping (a deliberate fix of the original): control-lora-v3 reports ``config.in_channels = 4``
while its ``conv_in`` has ``4·(1+N)`` inputs, by writing to diffusers' frozen config through a private
quirk; a saved UNet then reloads inconsistently. Here :func:`widen_conv_in` records the true width with the
public ``register_to_config(in_channels=4·(1+N))`` (as diffusers' instruct-pix2pix script does), so
``save_pretrained``/``from_pretrained`` round-trip. The number of *noise* channels is never stored
separately: it is ``unet.config.out_channels`` (:func:`latent_channels`), which widening leaves at 4, and the
number of condition slots is ``in_channels / out_channels - 1`` (:func:`condition_count`).

LoRA files use the control-lora-v3 format: safetensors with diffusers keys prefixed ``unet.`` (e.g.
``unet.conv_in.lora_A.weight``) and no alphas; alpha = rank (LoRA scaling 1) is implied. PiSSA adapters
are saved as plain LoRA of doubled rank that applies to the original base weights.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from accelerate import init_empty_weights
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from hardgen.weights import load_state_dict, save_state_dict

#: File name of a saved Control-LoRA inside its output folder (diffusers' default LoRA weight name).
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

#: Key prefix of the UNet part of a LoRA file (diffusers pipeline convention).
UNET_PREFIX = "unet"

#: Target-module presets of control-lora-v3 (config key ``lora.preset``).
PRESETS = ("full", "half", "full_skip_attn", "half_skip_attn")

#: Module names containing one of these are left out by the ``half`` presets (the decoder half).
_DECODER_PARTS = ("up_blocks", "conv_out")

#: Module names ending in one of these are left out by the ``*_skip_attn`` presets.
_ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")

#: Initial PiSSA factors per UNet → adapter → module name: (A0, B0). Kept outside the model so the UNet's
#: own state dict and config stay untouched; weak keys let the UNet be garbage-collected normally.
_PISSA_FACTORS: weakref.WeakKeyDictionary[nn.Module, dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]] = (
    weakref.WeakKeyDictionary()
)


# ----------------------------------------------------------------------------------------------- channels


def latent_channels(unet: UNet2DConditionModel) -> int:
    """Channels of the noise latent (= VAE latent channels); ``out_channels``, which widening never changes."""
    return int(unet.config.out_channels)


def condition_count(unet: UNet2DConditionModel) -> int:
    """Number of condition slots ``conv_in`` reads besides the noise latent (0 for a stock UNet)."""
    in_channels, latent = int(unet.config.in_channels), latent_channels(unet)
    if in_channels % latent:
        raise ValueError(f"UNet in_channels {in_channels} is not a multiple of its latent channels {latent}")
    return in_channels // latent - 1


def widen_conv_in(unet: UNet2DConditionModel, num_conditions: int = 1) -> UNet2DConditionModel:
    """Give ``conv_in`` ``latent·(1+num_conditions)`` input channels; new weights are zero, bias unchanged.

    The output for any condition therefore equals the stock UNet's until LoRA learns to read it. The new
    width is recorded in the config so the UNet saves and reloads as it is. Call this before adding LoRA.
    Widening to the current width is a no-op; narrowing is refused.
    """
    if num_conditions < 1:
        raise ValueError(f"num_conditions must be >= 1, got {num_conditions}")
    conv = unet.conv_in
    if isinstance(conv, BaseTunerLayer) or not isinstance(conv, nn.Conv2d):
        raise ValueError("widen_conv_in: conv_in already carries LoRA adapters; widen the UNet before adding them")
    new_in = latent_channels(unet) * (1 + num_conditions)
    if conv.in_channels == new_in:
        return unet
    if conv.in_channels > new_in:
        raise ValueError(f"widen_conv_in: conv_in already has {conv.in_channels} > {new_in} input channels")
    widened = nn.Conv2d(
        new_in,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, : conv.in_channels].copy_(conv.weight)
        if conv.bias is not None:
            widened.bias.copy_(conv.bias)
    widened.requires_grad_(conv.weight.requires_grad)
    unet.conv_in = widened
    unet.register_to_config(in_channels=new_in)
    return unet


# ----------------------------------------------------------------------------------------- LoRA config


def _base_layer_names(unet: nn.Module) -> list[str]:
    """Names of every nn.Linear/nn.Conv2d of the UNet proper (ignoring peft's own lora_A/lora_B layers)."""
    names = []
    for name, module in unet.named_modules():
        if ".lora_" in f".{name}" or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        names.append(name.removesuffix(".base_layer"))
    return names


def target_modules(unet: nn.Module, preset: str) -> list[str]:
    """Full names of the layers a control-lora-v3 preset puts LoRA on.

    ``full``: every Linear/Conv2d; ``half``: minus names containing ``up_blocks`` or ``conv_out`` (the
    encoder half that ControlNet copies); ``*_skip_attn``: minus the attention projections ``to_q``,
    ``to_k``, ``to_v``, ``to_out.0``.
    """
    if preset not in PRESETS:
        raise ValueError(f"lora.preset: {preset!r} is not one of {PRESETS}")
    names = _base_layer_names(unet)
    if preset.startswith("half"):
        names = [n for n in names if not any(part in n for part in _DECODER_PARTS)]
    if preset.endswith("skip_attn"):
        names = [n for n in names if not n.endswith(_ATTENTION_PROJECTIONS)]
    return names


def _check_init(init: str) -> int | None:
    """Validate ``lora.init``; return PiSSA's power-iteration count (None for exact SVD or gaussian)."""
    if init in ("gaussian", "pissa"):
        return None
    if init.startswith("pissa_niter_"):
        tail = init.removeprefix("pissa_niter_")
        if tail.isdigit() and int(tail) >= 0:
            return int(tail)
    raise ValueError(f"lora.init: {init!r} is not gaussian, pissa or pissa_niter_N")


def make_lora_config(
    unet: nn.Module, preset: str, rank: int, conv_in_rank: int, init: str = "gaussian"
) -> LoraConfig:
    """The peft ``LoraConfig`` of a Control-LoRA: alpha = rank everywhere (scaling 1), ``conv_in_rank`` on conv_in.

    peft only knows PiSSA for Linear layers, so the config always asks peft for gaussian init (B = 0);
    :func:`add_control_lora` applies PiSSA afterwards when ``init`` asks for it.
    """
    if int(rank) < 1:
        raise ValueError(f"lora.rank must be >= 1, got {rank}")
    if int(conv_in_rank) < 1:
        raise ValueError(f"lora.conv_in_rank must be >= 1, got {conv_in_rank}")
    _check_init(init)
    return LoraConfig(
        r=int(rank),
        lora_alpha=int(rank),
        init_lora_weights="gaussian",
        target_modules=target_modules(unet, preset),
        # "^conv_in$" only matches the top-level conv_in (peft matches patterns against full module names).
        rank_pattern={"^conv_in$": int(conv_in_rank)},
        alpha_pattern={"^conv_in$": int(conv_in_rank)},
    )


def _lora_layers(unet: nn.Module, adapter_name: str) -> list[tuple[str, LoraLayer]]:
    return [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    ]


def _pissa_conv(module: LoraLayer, adapter_name: str, niter: int | None) -> bool:
    """PiSSA for a Conv2d LoRA layer: principal components of the flattened kernel into lora_A/lora_B.

    The residual ``W - scaling·B·A`` is written into the base weight, so the effective weight is
    unchanged. Returns False (keeping gaussian init) when the rank exceeds the matrix's smaller side.
    """
    base = module.get_base_layer()
    lora_a, lora_b = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
    rank, scaling = module.r[adapter_name], module.scaling[adapter_name]
    weight = base.weight.detach().to(torch.float32)
    flat = weight.reshape(weight.shape[0], -1)
    if rank > min(flat.shape):
        return False
    if niter is None:
        u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        u, s, v = torch.svd_lowrank(flat, q=rank, niter=niter)
        vh = v.T
    root = torch.sqrt(s / scaling)
    a = root[:, None] * vh  # (r, in·kh·kw)
    b = u * root[None, :]  # (out, r)
    with torch.no_grad():
        lora_a.copy_(a.reshape(lora_a.shape).to(lora_a.dtype))
        lora_b.copy_(b.reshape(lora_b.shape).to(lora_b.dtype))
        base.weight.copy_((flat - scaling * b @ a).reshape(weight.shape).to(base.weight.dtype))
    return True


def _apply_pissa(unet: nn.Module, adapter_name: str, init: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PiSSA-initialise every LoRA layer of ``adapter_name``; return the initial (A0, B0) per module."""
    niter = _check_init(init)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in _lora_layers(unet, adapter_name):
        base = module.get_base_layer()
        rank = module.r[adapter_name]
        if isinstance(base, nn.Linear):
            if rank > min(base.weight.shape):
                continue  # peft's SVD would silently give a smaller rank; keep gaussian like the original
            module.pissa_init(adapter_name, init)  # peft's own PiSSA for Linear layers
        elif isinstance(base, nn.Conv2d):
            if not _pissa_conv(module, adapter_name, niter):
                continue
        else:
            continue
        factors[name] = (
            module.lora_A[adapter_name].weight.detach().clone(),
            module.lora_B[adapter_name].weight.detach().clone(),
        )
    return factors


def add_control_lora(
    unet: UNet2DConditionModel,
    adapter_name: str,
    preset: str,
    rank: int,
    conv_in_rank: int,
    init: str = "gaussian",
) -> LoraConfig:
    """Add a trainable Control-LoRA adapter to a widened UNet (``unet.add_adapter``); returns its config.

    ``init``: ``gaussian`` (B = 0, so the UNet output is exactly the base output), ``pissa`` (exact SVD) or
    ``pissa_niter_N`` (randomised SVD with N power iterations). PiSSA moves the principal components of
    each weight into the adapter and leaves the residual in the base layer; layers whose rank exceeds the
    weight's smaller side keep gaussian init. Only LoRA parameters require grad afterwards.
    """
    if condition_count(unet) < 1:
        raise ValueError("add_control_lora: conv_in reads no condition; call widen_conv_in(unet) first")
    config = make_lora_config(unet, preset, rank, conv_in_rank, init)
    unet.requires_grad_(False)
    unet.add_adapter(config, adapter_name=adapter_name)
    if init.startswith("pissa"):
        _PISSA_FACTORS.setdefault(unet, {})[adapter_name] = _apply_pissa(unet, adapter_name, init)
    return config


def pissa_initial_factors(unet: nn.Module, adapter_name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The initial PiSSA factors (A0, B0) per module of an adapter added by :func:`add_control_lora` ({} if none)."""
    return dict(_PISSA_FACTORS.get(unet, {}).get(adapter_name, {}))


# ------------------------------------------------------------------------------------------ save / load


def control_lora_state_dict(unet: UNet2DConditionModel, adapter_name: str) -> dict[str, torch.Tensor]:
    """An adapter's weights in control-lora-v3 format: diffusers keys prefixed ``unet.``, no alphas.

    The LoRA scaling alpha/r is folded into lora_B, so the file means ``W + B·A`` with alpha = rank.
    A PiSSA adapter is converted to plain LoRA of doubled rank, ``[A_t; A_0]`` and ``[B_t, -B_0]``, whose
    delta ``B_t·A_t - B_0·A_0`` applies to the ORIGINAL base weights (the PiSSA residual is never saved).
    Layers that kept gaussian init get zero padding so every layer has the same doubled rank.
    """
    if adapter_name not in getattr(unet, "peft_config", {}):
        raise ValueError(f"UNet has no adapter named {adapter_name!r}")
    peft_state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    factors = pissa_initial_factors(unet, adapter_name)
    for name, module in _lora_layers(unet, adapter_name):
        key_a, key_b = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
        a, b = peft_state[key_a].detach().clone(), peft_state[key_b].detach().clone()
        if factors:
            a0, b0 = factors.get(name, (torch.zeros_like(a), torch.zeros_like(b)))
            a = torch.cat([a, a0.to(a)], dim=0)
            b = torch.cat([b, -b0.to(b)], dim=1)
        # alpha/r from the adapter's config values, not the runtime scale that set_adapters may have changed
        factor = module.lora_alpha[adapter_name] / module.r[adapter_name]
        if factor != 1.0:
            b = b * factor
        peft_state[key_a], peft_state[key_b] = a, b
    diffusers_state = convert_state_dict_to_diffusers(peft_state)
    return {f"{UNET_PREFIX}.{key}": value.contiguous() for key, value in diffusers_state.items()}


def save_control_lora(out_dir: str | Path, unet: UNet2DConditionModel, adapter_name: str) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (control-lora-v3 format) atomically; return its path."""
    path = Path(out_dir) / LORA_WEIGHT_NAME
    save_state_dict(path, control_lora_state_dict(unet, adapter_name), metadata={"format": "pt"})
    return path


def _lora_file(source: str | Path) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Control-LoRA weight file not found")
    return path


def read_control_lora(source: str | Path | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Read a control-lora-v3 file (or folder holding one, or a dict) as peft-style UNet keys without prefix.

    Keys become ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``; old diffusers spellings
    (``.lora.down``/``.lora.up``) are normalised. Pickled files are refused (see :mod:`hardgen.weights`).
    """
    origin = "state dict" if isinstance(source, Mapping) else str(source)
    state = dict(source) if isinstance(source, Mapping) else load_state_dict(_lora_file(source))
    prefixed = {k: v for k, v in state.items() if k.startswith(f"{UNET_PREFIX}.")}
    if prefixed:
        state = {k.removeprefix(f"{UNET_PREFIX}."): v for k, v in prefixed.items()}
    elif any(k.startswith(("text_encoder.", "text_encoder_2.")) for k in state):
        raise ValueError(f"{origin}: holds no UNet LoRA weights (keys prefixed 'unet.')")
    state = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    if not state:
        raise ValueError(f"{origin}: no LoRA weights found")
    state = convert_unet_state_dict_to_peft(state)
    bad = [k for k in state if not (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight"))]
    if bad:
        raise ValueError(f"{origin}: not a Control-LoRA file (unexpected keys such as {bad[0]!r})")
    modules = {k.rsplit(".lora_", 1)[0] for k in state}
    for module in modules:
        if f"{module}.lora_A.weight" not in state or f"{module}.lora_B.weight" not in state:
            raise ValueError(f"{origin}: module {module!r} lacks lora_A or lora_B")
    return state


def _relayout_conv_in(
    state: dict[str, torch.Tensor], latent: int, condition_index: int, num_conditions: int, origin: str
) -> dict[str, torch.Tensor]:
    """Place a single-condition conv_in lora_A's condition slice at slot ``condition_index`` of N slots."""
    key = "conv_in.lora_A.weight"
    if key not in state:
        return state
    weight = state[key]
    file_conditions = weight.shape[1] // latent - 1
    if weight.shape[1] % latent or file_conditions < 1:
        raise ValueError(f"{origin}: conv_in lora_A has {weight.shape[1]} input channels, not latent·(1+N)")
    if file_conditions == num_conditions and (num_conditions == 1 or condition_index == 0):
        return state  # trained with this very layout
    if file_conditions != 1:
        raise ValueError(
            f"{origin}: conv_in LoRA reads {file_conditions} conditions; only single-condition files can be "
            f"placed into slot {condition_index} of {num_conditions}"
        )
    widened = weight.new_zeros((weight.shape[0], latent * (1 + num_conditions), *weight.shape[2:]))
    widened[:, :latent] = weight[:, :latent]
    start = latent * (1 + condition_index)
    widened[:, start : start + latent] = weight[:, latent : 2 * latent]
    return {**state, key: widened}


def load_control_lora(
    unet: UNet2DConditionModel,
    source: str | Path | Mapping[str, torch.Tensor],
    adapter_name: str,
    condition_index: int = 0,
    num_conditions: int = 1,
) -> None:
    """Load a control-lora-v3 file (released ``sd-control-lora-v3-*`` or saved by hardgen) as adapter ``adapter_name``.

    ``unet`` must already be widened to ``num_conditions`` slots (:func:`widen_conv_in`). With several
    conditions, conv_in's lora_A is re-laid out so this adapter reads only its own slot ``condition_index``
    (noise-latent slice kept, condition slice moved, zeros elsewhere). Alphas are synthesised as alpha = rank
    (scaling 1, as trained). Afterwards, with ``num_conditions == 1`` only this adapter is active (switch with
    ``unet.set_adapter``); with several, all loaded adapters are active at scale 1 (see
    :func:`set_condition_scales`). If the UNet already has an adapter of that name (training init, checkpoint
    resume), its weights are overwritten in place and the active adapters are left as they are.
    """
    origin = "state dict" if isinstance(source, Mapping) else str(source)
    if not 0 <= condition_index < num_conditions:
        raise ValueError(f"condition_index {condition_index} is outside 0..{num_conditions - 1}")
    if condition_count(unet) != num_conditions:
        raise ValueError(
            f"UNet conv_in reads {condition_count(unet)} condition(s), not {num_conditions}; "
            f"call widen_conv_in(unet, {num_conditions}) before loading"
        )
    state = read_control_lora(source)
    state = _relayout_conv_in(state, latent_channels(unet), condition_index, num_conditions, origin)
    if adapter_name in getattr(unet, "peft_config", {}):
        _copy_into_adapter(unet, state, adapter_name, origin)
        return
    alphas = {
        f"{UNET_PREFIX}.{k.removesuffix('.lora_A.weight')}.alpha": float(v.shape[0])
        for k, v in state.items()
        if k.endswith(".lora_A.weight")
    }
    unet.load_lora_adapter(
        {f"{UNET_PREFIX}.{k}": v for k, v in state.items()},
        prefix=UNET_PREFIX,
        adapter_name=adapter_name,
        network_alphas=alphas,
    )
    if num_conditions == 1:
        unet.set_adapter(adapter_name)
    else:
        names = list(unet.peft_config)
        unet.set_adapters(names, weights=[1.0] * len(names))


def _copy_into_adapter(
    unet: UNet2DConditionModel, state: dict[str, torch.Tensor], adapter_name: str, origin: str
) -> None:
    """Overwrite an existing adapter's weights in place (training init or checkpoint resume).

    For an adapter created with PiSSA the file holds the doubled-rank form; its first half ``(A_t, B_t)``
    is the trainable part on top of the PiSSA residual that :func:`add_control_lora` rebuilt.
    """
    layers = dict(_lora_layers(unet, adapter_name))
    in_file = {k.rsplit(".lora_", 1)[0] for k in state}
    if in_file != set(layers):
        odd = sorted(in_file ^ set(layers))[:3]
        raise ValueError(f"{origin}: LoRA layers differ from adapter {adapter_name!r} (e.g. {odd})")
    pissa = bool(pissa_initial_factors(unet, adapter_name))
    with torch.no_grad():
        for name, module in layers.items():
            a, b = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
            rank = module.r[adapter_name]
            if pissa and a.shape[0] == 2 * rank and b.shape[1] == 2 * rank:
                a, b = a[:rank], b[:, :rank]
            target_a, target_b = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
            if a.shape != target_a.shape or b.shape != target_b.shape:
                raise ValueError(
                    f"{origin}: {name} LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not match adapter "
                    f"{adapter_name!r} ({tuple(target_a.shape)}/{tuple(target_b.shape)})"
                )
            factor = module.lora_alpha[adapter_name] / rank  # the file has alpha/r folded into B
            target_a.copy_(a.to(target_a))
            target_b.copy_((b / factor).to(target_b))


def set_condition_scales(unet: UNet2DConditionModel, scales: Mapping[str, float]) -> None:
    """Activate exactly the named adapters with the given strengths (scale 0 ⇒ that adapter is a no-op)."""
    known = list(getattr(unet, "peft_config", {}))
    unknown = [name for name in scales if name not in known]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; the UNet has {known}")
    unet.set_adapters(list(scales), weights=[float(s) for s in scales.values()])


def active_condition_adapters(unet: UNet2DConditionModel) -> list[str]:
    """Adapters currently active on the UNet, in loading order ([] when it has none)."""
    known = list(getattr(unet, "peft_config", {}))
    if not known:
        return []
    active = unet.active_adapters()
    active = [active] if isinstance(active, str) else list(active)
    return [name for name in known if name in active]


# --------------------------------------------------------------------------------------------- encoding


def encode_condition(
    vae: nn.Module,
    images_m11: torch.Tensor,
    mode: str = "mode",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """VAE latents of condition images in [-1, 1], times ``scaling_factor`` (what conv_in's condition slot reads).

    ``mode="sample"`` draws from the posterior (training, as control-lora-v3); ``"mode"`` takes its mode
    (inference). An fp16 VAE is run in fp32 for this call because its encoder overflows to NaN in fp16.
    """
    if mode not in ("sample", "mode"):
        raise ValueError(f"encode_condition: mode must be 'sample' or 'mode', got {mode!r}")
    original_dtype = vae.dtype
    upcast = original_dtype == torch.float16
    if upcast:
        vae.to(torch.float32)
    try:
        dist = vae.encode(images_m11.to(device=vae.device, dtype=vae.dtype)).latent_dist
        latents = dist.sample(generator=generator) if mode == "sample" else dist.mode()
    finally:
        if upcast:
            vae.to(original_dtype)
    return (latents * vae.config.scaling_factor).to(original_dtype)


# -------------------------------------------------------------------------------------------- pipelines

ConditionImage = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[Any]


def _as_image_batch(image: Any) -> Any:
    """Bring a condition into a form ``VaeImageProcessor`` reads unambiguously.

    PIL images pass through. Arrays (HxW, HxWxC or BxHxWxC) and tensors (CxHxW or BxCxHxW) get a batch
    axis; uint8 values are scaled to [0, 1] because the processor treats arrays as floats in [0, 1]
    (float tensors in [-1, 1] are recognised as already normalised). Lists become one batch.
    """
    if isinstance(image, (list, tuple)):
        items = [_as_image_batch(item) for item in image]
        if all(isinstance(item, PIL.Image.Image) for item in items):
            return items
        if all(isinstance(item, torch.Tensor) for item in items):
            return torch.cat(items)
        if any(isinstance(item, torch.Tensor) for item in items):
            raise ValueError("condition: a list of images must not mix tensors with PIL images or arrays")
        # PIL images and arrays mixed: bring the PIL ones to the same float [0, 1] array form
        return np.concatenate(
            [_as_image_batch(np.asarray(item.convert("RGB"))) if isinstance(item, PIL.Image.Image) else item
             for item in items]
        )
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
    """Condition handling shared by the SD1.5 and SDXL Control-LoRA pipelines (mixed into both)."""

    def _condition_images(self, condition: Any, n_slots: int) -> list[Any]:
        if condition is None:
            raise ValueError("condition: a condition image is required")
        if n_slots < 1:
            raise ValueError("the pipeline's UNet reads no condition; call widen_conv_in(pipe.unet) first")
        if n_slots == 1:
            return [condition]
        if not isinstance(condition, (list, tuple)) or len(condition) != n_slots:
            raise ValueError(f"condition: the UNet reads {n_slots} conditions; pass a list of {n_slots} images")
        return list(condition)

    def _default_size(self, image: Any) -> tuple[int, int]:
        """The condition's own size, rounded down to a multiple of the VAE scale factor."""
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)
        pixels = processor.preprocess(_as_image_batch(image))
        return int(pixels.shape[-2]), int(pixels.shape[-1])

    def _condition_latents(
        self,
        condition: Any,
        n_slots: int,
        height: int,
        width: int,
        batch_size: int,
        num_images_per_prompt: int,
        do_cfg: bool,
        dtype: torch.dtype,
    ) -> list[torch.Tensor]:
        """Preprocess each condition to [-1, 1], VAE-encode with ``.mode()``, match the batch, double for CFG."""
        processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True)
        total = batch_size * num_images_per_prompt
        latents = []
        for index, image in enumerate(self._condition_images(condition, n_slots)):
            pixels = processor.preprocess(_as_image_batch(image), height=height, width=width)
            count = pixels.shape[0]
            if count == 1:
                pixels = pixels.repeat(total, 1, 1, 1)
            elif count == batch_size:
                pixels = pixels.repeat_interleave(num_images_per_prompt, dim=0)
            elif count != total:
                raise ValueError(
                    f"condition {index}: {count} images for {batch_size} prompt(s) × {num_images_per_prompt}"
                )
            encoded = encode_condition(self.vae, pixels.to(self.device), mode="mode").to(dtype)
            latents.append(torch.cat([encoded, encoded]) if do_cfg else encoded)
        return latents

    def _start_sampling(
        self,
        images: list[Any],
        n_slots: int,
        height: int,
        width: int,
        batch_size: int,
        num_images_per_prompt: int,
        do_cfg: bool,
        dtype: torch.dtype,
        num_inference_steps: int,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Condition latents, the scheduler's timesteps and the initial noise (``latent_channels`` wide)."""
        condition_latents = self._condition_latents(
            images if n_slots > 1 else images[0], n_slots, height, width, batch_size, num_images_per_prompt,
            do_cfg, dtype,
        )
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt, latent_channels(self.unet), height, width, dtype, device,
            generator, latents,
        )
        return condition_latents, self.scheduler.timesteps, latents

    def _scale_plan(self, condition_scale: float | Sequence[float], adapters: Sequence[str] | None) -> dict[str, float]:
        names = list(adapters) if adapters is not None else active_condition_adapters(self.unet)
        if isinstance(condition_scale, (int, float)):
            return {name: float(condition_scale) for name in names}
        scales = [float(s) for s in condition_scale]
        if len(scales) != len(names):
            raise ValueError(f"condition_scale: {len(scales)} values for {len(names)} adapters {names}")
        return dict(zip(names, scales))

    @staticmethod
    def _window_keep(step: int, n_steps: int, start: float, end: float) -> float:
        """1 inside the [start, end] fraction of the schedule, else 0 (ControlNet's guidance window rule)."""
        return 0.0 if (step / n_steps < start or (step + 1) / n_steps > end) else 1.0

    def _denoise(
        self,
        latents: torch.Tensor,
        condition_latents: list[torch.Tensor],
        timesteps: torch.Tensor,
        plan: dict[str, float],
        control_guidance_start: float,
        control_guidance_end: float,
        guidance_scale: float,
        do_cfg: bool,
        unet_kwargs: dict[str, Any],
        extra_step_kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The sampling loop: per-step adapter scales from the guidance window, condition concatenated."""
        if not 0.0 <= control_guidance_start <= control_guidance_end <= 1.0:
            raise ValueError("control_guidance_start/end must satisfy 0 <= start <= end <= 1")
        applied: dict[str, float] | None = None
        try:
            with self.progress_bar(total=len(timesteps)) as progress:
                for step, t in enumerate(timesteps):
                    keep = self._window_keep(step, len(timesteps), control_guidance_start, control_guidance_end)
                    wanted = {name: scale * keep for name, scale in plan.items()}
                    if plan and wanted != applied:  # set_adapters walks every layer; skip when unchanged
                        set_condition_scales(self.unet, wanted)
                        applied = wanted
                    model_input = torch.cat([latents, latents]) if do_cfg else latents
                    model_input = self.scheduler.scale_model_input(model_input, t)
                    model_input = torch.cat([model_input, *condition_latents], dim=1)
                    noise_pred = self.unet(model_input, t, return_dict=False, **unet_kwargs)[0]
                    if do_cfg:
                        uncond, cond = noise_pred.chunk(2)
                        noise_pred = uncond + guidance_scale * (cond - uncond)
                    latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                    progress.update()
        finally:
            if plan:  # leave the adapters as the pipeline found them: active at full strength
                set_condition_scales(self.unet, {name: 1.0 for name in plan})
        return latents

    def _decode(self, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        vae = self.vae
        upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
        original_dtype = vae.dtype
        if upcast:
            vae.to(torch.float32)
        try:
            scaled = (latents / vae.config.scaling_factor).to(vae.dtype)
            return vae.decode(scaled, return_dict=False, generator=generator)[0]
        finally:
            if upcast:
                vae.to(original_dtype)


class ControlLoraPipeline(_ControlLoraSampling, StableDiffusionPipeline):
    """Stable Diffusion (1.x) text-to-image with Control-LoRA conditions on a widened stock UNet.

    Load the base with ``ControlLoraPipeline.from_pretrained(base)``, then ``widen_conv_in(pipe.unet, N)``
    and :func:`load_control_lora` (or reuse a training UNet). Each call VAE-encodes the condition(s),
    concatenates them to the latents every step and scales the active adapters by ``condition_scale``
    inside the ``control_guidance_start..end`` window (scale 0 outside it: exactly the base UNet).
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        condition: ConditionImage | None = None,
        condition_scale: float | Sequence[float] = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
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
        clip_skip: int | None = None,
        condition_adapters: Sequence[str] | None = None,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Generate images; ``condition`` is one image (or batch) per condition slot, a list when N > 1.

        ``condition_scale`` is one float or one value per adapter in ``condition_adapters`` (default: the
        active adapters in loading order). Other arguments as in ``StableDiffusionPipeline``.
        """
        n_slots = condition_count(self.unet)
        images = self._condition_images(condition, n_slots)
        if height is None or width is None:
            default_h, default_w = self._default_size(images[0])
            height, width = height or default_h, width or default_w
        self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds)
        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]
        device = self.device
        do_cfg = guidance_scale > 1.0 and self.unet.config.time_cond_proj_dim is None

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            do_cfg,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            clip_skip=clip_skip,
        )
        if do_cfg:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        condition_latents, timesteps, latents = self._start_sampling(
            images, n_slots, height, width, batch_size, num_images_per_prompt, do_cfg, prompt_embeds.dtype,
            num_inference_steps, device, generator, latents,
        )
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            guidance = torch.tensor(guidance_scale - 1).repeat(batch_size * num_images_per_prompt)
            timestep_cond = self.get_guidance_scale_embedding(
                guidance, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
        latents = self._denoise(
            latents,
            condition_latents,
            timesteps,
            self._scale_plan(condition_scale, condition_adapters),
            control_guidance_start,
            control_guidance_end,
            guidance_scale,
            do_cfg,
            {
                "encoder_hidden_states": prompt_embeds,
                "timestep_cond": timestep_cond,
                "cross_attention_kwargs": cross_attention_kwargs,
            },
            self.prepare_extra_step_kwargs(generator, eta),
        )
        if output_type == "latent":
            image, nsfw = latents, None
        else:
            image = self._decode(latents, generator)
            image, nsfw = self.run_safety_checker(image, device, prompt_embeds.dtype)
            denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, nsfw
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=nsfw)


class ControlLoraXLPipeline(_ControlLoraSampling, StableDiffusionXLPipeline):
    """SDXL text-to-image with Control-LoRA conditions (time ids and pooled text embeds added)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        condition: ConditionImage | None = None,
        condition_scale: float | Sequence[float] = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
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
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        condition_adapters: Sequence[str] | None = None,
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Generate SDXL images under Control-LoRA conditions; arguments as in :class:`ControlLoraPipeline`
        plus SDXL's ``prompt_2``, pooled embeds and micro-conditioning sizes."""
        n_slots = condition_count(self.unet)
        images = self._condition_images(condition, n_slots)
        if height is None or width is None:
            default_h, default_w = self._default_size(images[0])
            height, width = height or default_h, width or default_w
        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        elif prompt_embeds is not None:
            batch_size = prompt_embeds.shape[0]
        else:
            raise ValueError("pass prompt or prompt_embeds")
        device = self.device
        do_cfg = guidance_scale > 1.0 and self.unet.config.time_cond_proj_dim is None

        prompt_embeds, negative_prompt_embeds, pooled, negative_pooled = self.encode_prompt(
            prompt=prompt,
            prompt_2=prompt_2,
            device=device,
            num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip,
        )
        if pooled is None:
            raise ValueError("pooled_prompt_embeds: required by SDXL when prompt_embeds are given")
        original_size = tuple(original_size or (height, width))
        target_size = tuple(target_size or (height, width))
        time_ids = self._time_ids(original_size, tuple(crops_coords_top_left), target_size, pooled.shape[-1])
        time_ids = time_ids.to(device=device, dtype=prompt_embeds.dtype).repeat(pooled.shape[0], 1)
        if do_cfg:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
            pooled = torch.cat([negative_pooled, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        condition_latents, timesteps, latents = self._start_sampling(
            images, n_slots, height, width, batch_size, num_images_per_prompt, do_cfg, prompt_embeds.dtype,
            num_inference_steps, device, generator, latents,
        )
        latents = self._denoise(
            latents,
            condition_latents,
            timesteps,
            self._scale_plan(condition_scale, condition_adapters),
            control_guidance_start,
            control_guidance_end,
            guidance_scale,
            do_cfg,
            {
                "encoder_hidden_states": prompt_embeds,
                "cross_attention_kwargs": cross_attention_kwargs,
                "added_cond_kwargs": {"text_embeds": pooled.to(device), "time_ids": time_ids},
            },
            self.prepare_extra_step_kwargs(generator, eta),
        )
        if output_type == "latent":
            image = latents
        else:
            image = self.image_processor.postprocess(self._decode(latents, generator), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return StableDiffusionXLPipelineOutput(images=image)

    def _time_ids(
        self, original_size: tuple, crops_coords_top_left: tuple, target_size: tuple, pooled_dim: int
    ) -> torch.Tensor:
        """SDXL micro-conditioning ids (original size, crop corner, target size), checked against the UNet."""
        ids = list(original_size) + list(crops_coords_top_left) + list(target_size)
        expected = self.unet.config.projection_class_embeddings_input_dim
        got = self.unet.config.addition_time_embed_dim * len(ids) + pooled_dim
        if expected != got:
            raise ValueError(
                f"SDXL UNet expects {expected} added embedding features, time ids + pooled text give {got}"
            )
        return torch.tensor([ids], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- summary


def _read_unet_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable UNet config ({err})") from err


def _empty_widened_unet(unet_config_path: str | Path, num_conditions: int = 1) -> UNet2DConditionModel:
    """The widened UNet of a config on the meta device: full structure, no memory (SD1.5 is 860M params)."""
    config = _read_unet_config(unet_config_path)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
        widen_conv_in(unet, num_conditions)
    return unet


def lora_summary(unet_config_path: str | Path, preset: str, rank: int, conv_in_rank: int) -> dict[str, int]:
    """LoRA layer count and trainable parameter count of a Control-LoRA (one condition) on a UNet config."""
    unet = _empty_widened_unet(unet_config_path)
    with init_empty_weights():
        add_control_lora(unet, "summary", preset, rank, conv_in_rank, init="gaussian")
    layers = _lora_layers(unet, "summary")
    params = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n and p.requires_grad)
    return {"modules": len(layers), "trainable_params": int(params)}


def lora_summary_from_file(path: str | Path, unet_config_path: str | Path | None = None) -> dict[str, Any]:
    """Layer count, parameter count and sum of |weights| of a control-lora-v3 file.

    With ``unet_config_path`` every LoRA pair is also checked to fit that UNet (widened for one
    condition): a missing layer or a shape mismatch raises ``ValueError`` naming the file.
    """
    state = read_control_lora(path)
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    if unet_config_path is not None:
        _check_fits(state, modules, _empty_widened_unet(unet_config_path), str(path))
    return {
        "modules": len(modules),
        "trainable_params": int(sum(v.numel() for v in state.values())),
        "abs_sum": float(sum(v.double().abs().sum().item() for v in state.values())),
    }


def _check_fits(state: dict[str, torch.Tensor], modules: list[str], unet: nn.Module, origin: str) -> None:
    layers = dict(unet.named_modules())
    for name in modules:
        layer = layers.get(name)
        a, b = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
        if isinstance(layer, nn.Linear):
            fits = a.ndim == 2 and a.shape[1] == layer.in_features and b.shape[0] == layer.out_features
        elif isinstance(layer, nn.Conv2d):
            fits = a.ndim == 4 and a.shape[1:] == (layer.in_channels, *layer.kernel_size)
            fits = fits and b.shape[0] == layer.out_channels
        else:
            raise ValueError(f"{origin}: LoRA layer {name!r} has no Linear/Conv2d counterpart in the UNet")
        if not fits or a.shape[0] != b.shape[1]:
            raise ValueError(f"{origin}: LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit UNet layer {name!r}")


__all__ = [
    "LORA_WEIGHT_NAME",
    "PRESETS",
    "ControlLoraPipeline",
    "ControlLoraXLPipeline",
    "active_condition_adapters",
    "add_control_lora",
    "condition_count",
    "control_lora_state_dict",
    "encode_condition",
    "latent_channels",
    "load_control_lora",
    "lora_summary",
    "lora_summary_from_file",
    "make_lora_config",
    "pissa_initial_factors",
    "read_control_lora",
    "save_control_lora",
    "set_condition_scales",
    "target_modules",
    "widen_conv_in",
]
