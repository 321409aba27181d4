"""The widened UNet and its Control-LoRA adapters: channel bookkeeping, presets, the peft config, PiSSA init.

A *condition adapter* is a LoRA adapter with a layer on ``conv_in``, the only layer that sees the condition
channels. The condition slot(s) it reads are recorded when it is created or loaded (:func:`record_slots`) and
otherwise read off its ``conv_in`` weights (:func:`hardgen.models.control_lora.condition_slots`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

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

#: Condition slots an adapter reads: conv_in LoRA layer → adapter → (weak ref to its lora_A weight, slots). The
#: record counts only while that very weight is the adapter's (deleting or replacing the adapter voids it; a
#: deep copy has another conv_in and falls back to reading the weights).
_CONDITION_SLOTS: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[weakref.ref, tuple[int, ...]]]] = (
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


# ------------------------------------------------------------------------------------------- slot records


def record_slots(unet: nn.Module, adapter_name: str, slots: Sequence[int]) -> None:
    """Record which condition slot(s) the condition adapter ``adapter_name`` reads (it must have a conv_in LoRA)."""
    conv = getattr(unet, "conv_in", None)
    if not isinstance(conv, LoraLayer) or adapter_name not in conv.lora_A:
        raise ValueError(f"adapter {adapter_name!r} has no conv_in LoRA, so it reads no condition")
    weight = conv.lora_A[adapter_name].weight
    _CONDITION_SLOTS.setdefault(conv, {})[adapter_name] = (weakref.ref(weight), tuple(int(s) for s in slots))


def recorded_slots(unet: nn.Module, adapter_name: str) -> tuple[int, ...] | None:
    """The slots recorded for ``adapter_name`` by :func:`record_slots`, or None."""
    conv = getattr(unet, "conv_in", None)
    if not isinstance(conv, LoraLayer) or adapter_name not in conv.lora_A:
        return None
    entry = _CONDITION_SLOTS.get(conv, {}).get(adapter_name)
    if entry is None or entry[0]() is not conv.lora_A[adapter_name].weight:
        return None
    return entry[1]


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


def preset_of(unet: nn.Module, modules: Sequence[str]) -> str | None:
    """The preset whose target modules are exactly ``modules`` on this UNet, or None."""
    wanted = set(modules)
    for preset in PRESETS:
        if set(target_modules(unet, preset)) == wanted:
            return preset
    return None


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


def lora_layers(unet: nn.Module, adapter_name: str) -> list[tuple[str, LoraLayer]]:
    """(name, layer) of every peft LoRA layer carrying ``adapter_name``, in module order."""
    return [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    ]


# ------------------------------------------------------------------------------------------------ PiSSA


def _pissa_conv(module: LoraLayer, adapter_name: str, niter: int | None) -> bool:
    """PiSSA for a Conv2d LoRA layer: principal components of the flattened kernel into lora_A/lora_B.

    The residual ``W - scaling·B·A`` is written into the base weight, so the effective weight is unchanged.
    As in control-lora-v3, the layer keeps gaussian init (returns False) only when the rank exceeds the
    output channels. A rank above the other side (``in·kh·kw``, e.g. conv_in's 8·9 = 72 inputs at rank 128)
    has only that many principal components: the remaining ranks keep peft's gaussian lora_A rows with zero
    lora_B columns (plain LoRA ranks that train from zero), where control-lora-v3 mis-shaped the factors.
    """
    base = module.get_base_layer()
    lora_a, lora_b = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
    rank, scaling = module.r[adapter_name], module.scaling[adapter_name]
    weight = base.weight.detach().to(torch.float32)
    flat = weight.reshape(weight.shape[0], -1)
    if rank > flat.shape[0]:
        return False
    components = min(rank, flat.shape[1])
    if niter is None:
        u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        u, s, vh = u[:, :components], s[:components], vh[:components]
    else:
        u, s, v = torch.svd_lowrank(flat, q=components, niter=niter)
        vh = v.T
    root = torch.sqrt(s / scaling)
    a = root[:, None] * vh  # (k, in·kh·kw)
    b = u * root[None, :]  # (out, k)
    with torch.no_grad():
        a_flat = lora_a.reshape(rank, -1)
        b_flat = lora_b.reshape(lora_b.shape[0], rank)
        a_flat[:components].copy_(a.to(lora_a.dtype))
        b_flat.zero_()
        b_flat[:, :components].copy_(b.to(lora_b.dtype))
        base.weight.copy_((flat - scaling * b @ a).reshape(weight.shape).to(base.weight.dtype))
    return True


def _apply_pissa(unet: nn.Module, adapter_name: str, init: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """PiSSA-initialise every LoRA layer of ``adapter_name``; return the initial (A0, B0) per module."""
    niter = _check_init(init)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in lora_layers(unet, adapter_name):
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
    each weight into the adapter and leaves the residual in the base layer; Linear layers whose rank exceeds
    the weight's smaller side and Conv2d layers whose rank exceeds the output channels keep gaussian init.
    Only LoRA parameters require grad afterwards. The adapter reads every condition slot of the UNet.
    """
    if condition_count(unet) < 1:
        raise ValueError("add_control_lora: conv_in reads no condition; call widen_conv_in(unet) first")
    config = make_lora_config(unet, preset, rank, conv_in_rank, init)
    unet.requires_grad_(False)
    unet.add_adapter(config, adapter_name=adapter_name)
    record_slots(unet, adapter_name, range(condition_count(unet)))
    if init.startswith("pissa"):
        _PISSA_FACTORS.setdefault(unet, {})[adapter_name] = _apply_pissa(unet, adapter_name, init)
    return config


def pissa_initial_factors(unet: nn.Module, adapter_name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The initial PiSSA factors (A0, B0) per module of an adapter added by :func:`add_control_lora` ({} if none)."""
    return dict(_PISSA_FACTORS.get(unet, {}).get(adapter_name, {}))
