"""Control-LoRA files: the control-lora-v3 format, its header metadata and model card, loading into slots.

A file is safetensors with diffusers keys prefixed ``unet.`` (e.g. ``unet.conv_in.lora_A.weight``) whose
weights mean ``W + B·A`` (alpha = rank: any alpha/r is folded into ``lora_B``). hardgen also writes

* ``lora_adapter_metadata`` (diffusers' header entry): the peft ``LoraConfig`` of the ``unet`` part — ranks,
  alphas (= ranks) and target modules — so stock ``pipe.load_lora_weights`` builds exactly this adapter;
* ``hardgen``: JSON with base model, preset, ranks, init, condition type, condition slots, prediction type;

and a ``README.md`` model card beside a trained LoRA. Files without them (released ``sd-control-lora-v3-*``
files) load the same way. Alphas found in a file (``<module>.alpha`` tensors or header alphas) are folded
into ``lora_B`` on reading. PiSSA adapters are saved as plain LoRA of doubled rank that applies to the
original base weights.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_unet_state_dict_to_peft,
)
from peft import get_peft_model_state_dict
from safetensors import safe_open
from torch import nn

from hardgen.core.io import write_text
from hardgen.core.weights import load_state_dict, save_state_dict
from hardgen.models.control_lora.adapters import (
    activate_condition_adapter,
    active_adapter_names,
)
from hardgen.models.control_lora.model import (
    add_control_lora,
    condition_count,
    latent_channels,
    lora_layers,
    pissa_initial_factors,
    preset_of,
    record_slots,
    widen_conv_in,
)

#: File name of a saved Control-LoRA inside its output folder (diffusers' default LoRA weight name).
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

#: Key prefix of the UNet part of a LoRA file (diffusers pipeline convention).
UNET_PREFIX = "unet"

#: safetensors header entry with hardgen's metadata (JSON).
METADATA_KEY = "hardgen"

#: diffusers' header entry with the LoraConfig per component (``diffusers.loaders.lora_base``).
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"

#: The model card written beside a trained LoRA.
MODEL_CARD_NAME = "README.md"

SourceLike = str | os.PathLike | Mapping[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- writing


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
    for name, module in lora_layers(unet, adapter_name):
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


def _module_ranks(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Module → rank of a peft-key state dict (``<module>.lora_A.weight``)."""
    return {k.removesuffix(".lora_A.weight"): int(v.shape[0]) for k, v in state.items() if k.endswith(".lora_A.weight")}


def _exact(module: str) -> str:
    """A peft rank/alpha pattern matching exactly this module name."""
    return f"^{re.escape(module)}$"


def lora_config_metadata(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``LoraConfig`` kwargs of a file's weights (peft keys): ranks from the shapes, alpha = rank."""
    ranks = _module_ranks(state)
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {_exact(m): rank for m, rank in sorted(ranks.items()) if rank != r}
    return {"r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "target_modules": sorted(ranks), "init_lora_weights": True}


def _ranks_summary(state: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None]:
    ranks = _module_ranks(state)
    others = [rank for m, rank in ranks.items() if m != "conv_in"]
    return (Counter(others).most_common(1)[0][0] if others else None), ranks.get("conv_in")


def save_control_lora(
    out_dir: str | Path,
    unet: UNet2DConditionModel,
    adapter_name: str,
    *,
    base_model: str | None = None,
    preset: str | None = None,
    condition_type: str | None = None,
    prediction_type: str | None = None,
    lora_init: str | None = None,
    model_card: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` (control-lora-v3 format) atomically; return its path.

    The header gets diffusers' ``lora_adapter_metadata`` (ranks, alphas = ranks, target modules) and hardgen's
    metadata: ``base_model``, ``preset`` (inferred from the adapter's layers when not given), ``rank`` /
    ``conv_in_rank`` (the adapter's) and ``stored_rank`` / ``stored_conv_in_rank`` (the file's; doubled for
    PiSSA), ``lora_init``, ``condition_type``, ``num_conditions`` and the adapter's ``condition_slots``,
    ``prediction_type`` and anything in ``extra``. ``model_card=True`` also writes ``README.md`` beside it.
    """
    from hardgen.models.control_lora.adapters import condition_slots

    state = control_lora_state_dict(unet, adapter_name)
    peft_state = convert_unet_state_dict_to_peft({k.removeprefix(f"{UNET_PREFIX}."): v for k, v in state.items()})
    layers = dict(lora_layers(unet, adapter_name))
    live_rank = Counter(m.r[adapter_name] for n, m in layers.items() if n != "conv_in").most_common(1)
    stored_rank, stored_conv_in = _ranks_summary(peft_state)
    pissa = bool(pissa_initial_factors(unet, adapter_name))
    init = (lora_init if lora_init and lora_init.startswith("pissa") else "pissa") if pissa else "gaussian"
    meta = {
        "format": "control-lora-v3",
        "base_model": base_model,
        "preset": preset or preset_of(unet, list(layers)),
        "rank": live_rank[0][0] if live_rank else None,
        "conv_in_rank": layers["conv_in"].r[adapter_name] if "conv_in" in layers else None,
        "stored_rank": stored_rank,
        "stored_conv_in_rank": stored_conv_in,
        "lora_init": init,
        "condition_type": condition_type,
        "num_conditions": condition_count(unet),
        "condition_slots": list(condition_slots(unet).get(adapter_name, ())),
        "prediction_type": prediction_type,
        "alpha": "folded into lora_B (alpha = rank)",
        **dict(extra or {}),
    }
    config = {f"{UNET_PREFIX}.{k}": v for k, v in lora_config_metadata(peft_state).items()}
    header = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True),
              METADATA_KEY: json.dumps(meta, sort_keys=True, default=str)}
    if model_card:  # before the weights, whose presence marks a finished run
        write_model_card(Path(out_dir), meta, n_params=sum(v.numel() for v in state.values()))
    path = Path(out_dir) / LORA_WEIGHT_NAME
    save_state_dict(path, state, metadata=header)
    return path


def write_model_card(out_dir: str | Path, meta: Mapping[str, Any], n_params: int | None = None) -> Path:
    """``out_dir/README.md``: a Hugging Face model card (YAML front matter, what it is, how to load it)."""
    base = meta.get("base_model")
    hub_like = isinstance(base, str) and base.count("/") == 1 and not Path(base).exists()
    condition = meta.get("condition_type") or "condition"
    slots = int(meta.get("num_conditions") or 1)
    lines = ["---", "library_name: diffusers"]
    if hub_like:
        lines.append(f"base_model: {base}")
    lines += ["tags:", "- control-lora", "- controlnet", "- lora", "- hardgen", "- text-to-image", "---", ""]
    lines += [
        f"# Control-LoRA ({condition}) for {base or 'Stable Diffusion'}",
        "",
        ("A [control-lora-v3](https://github.com/HighCWu/control-lora-v3) Control-LoRA trained with hardgen: the "
         "condition image is VAE-encoded and concatenated to the noisy latent through a widened `conv_in`, and "
         "LoRA adapters (a larger rank on `conv_in`) learn to read it."),
        "",
        "| field | value |",
        "|---|---|",
    ]
    for key in ("base_model", "preset", "rank", "conv_in_rank", "stored_rank", "stored_conv_in_rank", "lora_init",
                "condition_type", "num_conditions", "condition_slots", "prediction_type"):
        lines.append(f"| {key} | {meta.get(key)} |")
    if n_params is not None:
        lines.append(f"| stored parameters | {n_params:,} |")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from hardgen.models.control_lora import ControlLoraPipeline, load_control_lora, widen_conv_in",
        "",
        f'pipe = ControlLoraPipeline.from_pretrained("{base or "BASE_MODEL"}")',
        f"widen_conv_in(pipe.unet, {slots})",
        'load_control_lora(pipe.unet, "THIS_FOLDER", "condition")   # or: pipe.load_lora_weights("THIS_FOLDER")',
        'image = pipe("a prompt", image=condition_image, controlnet_conditioning_scale=1.0).images[0]',
        "```",
        "",
        ("The weights mean `W + B·A` (alpha = rank); the safetensors header holds diffusers' "
         "`lora_adapter_metadata` and hardgen's metadata (`hardgen`)."),
        "",
    ]
    path = Path(out_dir) / MODEL_CARD_NAME
    write_text(path, "\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------- reading


def _looks_local(source: str | os.PathLike) -> bool:
    text = os.fspath(source)
    return (
        isinstance(source, Path)
        or os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or "\\" in text
        or Path(text).suffix in (".safetensors", ".bin", ".pt", ".pth")
    )


def resolve_lora_file(
    source: str | os.PathLike,
    *,
    subfolder: str | None = None,
    weight_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """The weight file a source names: a file, a folder (``[subfolder/]weight_name``, default
    ``pytorch_lora_weights.safetensors`` or the folder's only ``.safetensors``), or a hub repo id read through
    ``huggingface_hub.hf_hub_download`` (so an offline cache works, ``HF_HUB_OFFLINE=1``)."""
    path = Path(source).expanduser()
    if path.is_file():
        if subfolder or weight_name:
            raise ValueError(f"{path}: is a file; subfolder/weight_name apply to folders and hub ids only")
        return path
    if path.is_dir():
        folder = path / subfolder if subfolder else path
        candidate = folder / (weight_name or LORA_WEIGHT_NAME)
        if candidate.is_file():
            return candidate
        if weight_name is None and folder.is_dir():
            found = sorted(folder.glob("*.safetensors"))
            if len(found) == 1:
                return found[0]
        raise FileNotFoundError(f"{candidate}: Control-LoRA weight file not found")
    if _looks_local(source):
        raise FileNotFoundError(f"{path}: Control-LoRA weight file not found")
    from huggingface_hub import hf_hub_download

    filename = weight_name or LORA_WEIGHT_NAME
    try:
        return Path(hf_hub_download(
            os.fspath(source), filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
            local_files_only=bool(local_files_only), token=token,
        ))
    except Exception as err:  # hub errors differ by version: not found, offline, invalid id
        where = f"{subfolder}/{filename}" if subfolder else filename
        raise FileNotFoundError(
            f"{source}: no local file or folder of that name, and hub repo {source!r} gave no {where} "
            f"({type(err).__name__}: {err})"
        ) from err


def _header(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def read_control_lora_metadata(source: str | os.PathLike, **file_kwargs: Any) -> dict[str, Any]:
    """hardgen's header metadata of a LoRA file (``{}`` without one); ``file_kwargs`` as :func:`resolve_lora_file`."""
    path = resolve_lora_file(source, **file_kwargs)
    raw = _header(path).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable '{METADATA_KEY}' header entry ({err})") from err


def _pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """peft's rank/alpha pattern rule: the first key matching the end of the module name (as a regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _header_alphas(header: Mapping[str, str], modules: Sequence[str], origin: str) -> dict[str, tuple[float, bool]]:
    raw = header.get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{origin}: unreadable '{LORA_ADAPTER_METADATA_KEY}' header entry ({err})") from err
    prefixed = {k.removeprefix(f"{UNET_PREFIX}."): v for k, v in config.items() if k.startswith(f"{UNET_PREFIX}.")}
    config = prefixed or config
    if "lora_alpha" not in config:
        return {}
    rslora = bool(config.get("use_rslora", False))
    patterns = config.get("alpha_pattern") or {}
    return {m: (float(_pattern_value(patterns, m, config["lora_alpha"])), rslora) for m in modules}


def _tensor_alphas(
    alphas: Mapping[str, torch.Tensor], modules: Sequence[str], origin: str
) -> dict[str, tuple[float, bool]]:
    known, out = set(modules), {}
    for key, value in alphas.items():
        base = key.removesuffix(".alpha")
        for spelling in (".lora_A.weight", ".lora.down.weight", ".lora_down.weight", ".lora_A", ".lora.down"):
            base = base.removesuffix(spelling)
        module = base if base in known else next(iter(convert_unet_state_dict_to_peft(
            {f"{base}.lora.down.weight": value})), "").removesuffix(".lora_A.weight")
        if module not in known:
            raise ValueError(f"{origin}: alpha {key!r} belongs to no LoRA layer of the file")
        out[module] = (float(value.reshape(-1)[0]), False)
    return out


def read_control_lora(
    source: SourceLike,
    *,
    subfolder: str | None = None,
    weight_name: str | None = None,
    **hub_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Read a control-lora-v3 file (file, folder, hub id, or a dict) as peft-style UNet keys without prefix.

    Keys become ``<module>.lora_A.weight`` / ``<module>.lora_B.weight``; old diffusers spellings
    (``.lora.down``/``.lora.up``) are normalised. Alphas stored in the file (``<module>.alpha`` tensors, or
    ``lora_alpha``/``alpha_pattern`` in diffusers' header metadata) are folded into lora_B as alpha/r, so the
    result always means ``W + B·A``. Pickled files are refused (see :mod:`hardgen.core.weights`).
    ``subfolder``, ``weight_name`` and ``hub_kwargs`` (revision, cache_dir, local_files_only, token) as
    :func:`resolve_lora_file`.
    """
    if isinstance(source, Mapping):
        origin, state, header = "state dict", dict(source), {}
    else:
        path = resolve_lora_file(source, subfolder=subfolder, weight_name=weight_name, **hub_kwargs)
        origin, state, header = str(path), load_state_dict(path), _header(path)
    prefixed = {k: v for k, v in state.items() if k.startswith(f"{UNET_PREFIX}.")}
    if prefixed:
        state = {k.removeprefix(f"{UNET_PREFIX}."): v for k, v in prefixed.items()}
    elif any(k.startswith(("text_encoder.", "text_encoder_2.")) for k in state):
        raise ValueError(f"{origin}: holds no UNet LoRA weights (keys prefixed 'unet.')")
    alpha_tensors = {k: v for k, v in state.items() if k.endswith(".alpha")}
    state = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    if not state:
        raise ValueError(f"{origin}: no LoRA weights found")
    state = convert_unet_state_dict_to_peft(state)
    bad = [k for k in state if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if bad:
        raise ValueError(f"{origin}: not a Control-LoRA file (unexpected keys such as {bad[0]!r})")
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    for module in modules:
        if f"{module}.lora_A.weight" not in state or f"{module}.lora_B.weight" not in state:
            raise ValueError(f"{origin}: module {module!r} lacks lora_A or lora_B")
    alphas = _header_alphas(header, modules, origin)
    alphas.update(_tensor_alphas(alpha_tensors, modules, origin))
    for module, (alpha, rslora) in alphas.items():
        rank = state[f"{module}.lora_A.weight"].shape[0]
        factor = alpha / (math.sqrt(rank) if rslora else rank)
        if factor != 1.0:
            key = f"{module}.lora_B.weight"
            state[key] = state[key] * factor
    return state


# ---------------------------------------------------------------------------------------------- loading


def _relayout_conv_in(
    state: dict[str, torch.Tensor], latent: int, condition_index: int, num_conditions: int, origin: str
) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """Place a single-condition conv_in lora_A's condition slice at slot ``condition_index`` of N slots.

    Returns the state and the slots the adapter reads: ``(condition_index,)``, or every slot for a file
    trained on this very N-slot layout.
    """
    key = "conv_in.lora_A.weight"
    if key not in state:
        raise ValueError(f"{origin}: has no conv_in LoRA, so it reads no condition (not a Control-LoRA)")
    weight = state[key]
    file_conditions = weight.shape[1] // latent - 1
    if weight.shape[1] % latent or file_conditions < 1:
        raise ValueError(f"{origin}: conv_in lora_A has {weight.shape[1]} input channels, not latent·(1+N)")
    if file_conditions == num_conditions and num_conditions == 1:
        return state, (0,)
    if file_conditions == num_conditions and condition_index == 0:
        return state, tuple(range(num_conditions))  # trained with this very layout: reads every slot
    if file_conditions != 1:
        raise ValueError(
            f"{origin}: conv_in LoRA reads {file_conditions} conditions; only single-condition files can be "
            f"placed into slot {condition_index} of {num_conditions}"
        )
    widened = weight.new_zeros((weight.shape[0], latent * (1 + num_conditions), *weight.shape[2:]))
    widened[:, :latent] = weight[:, :latent]
    start = latent * (1 + condition_index)
    widened[:, start : start + latent] = weight[:, latent : 2 * latent]
    return {**state, key: widened}, (condition_index,)


def load_control_lora(
    unet: UNet2DConditionModel,
    source: SourceLike | Sequence[SourceLike],
    adapter_name: str | Sequence[str],
    condition_index: int | Sequence[int] | None = None,
    num_conditions: int | None = None,
    **file_kwargs: Any,
) -> None:
    """Load a control-lora-v3 file (released ``sd-control-lora-v3-*`` or saved by hardgen) as adapter ``adapter_name``.

    ``source``: a file, a folder (``subfolder=``/``weight_name=`` pick the file), a hub repo id (through
    ``huggingface_hub``; ``revision``, ``cache_dir``, ``local_files_only``, ``token`` pass through), or a state
    dict. Several sources load in one call: ``load_control_lora(unet, [seg, depth], ["seg", "depth"])`` maps
    them to slots 0, 1, … (or to ``condition_index=[…]``).

    ``unet`` must already be widened (:func:`widen_conv_in`); ``num_conditions`` (default: the UNet's slot
    count) is checked against it. With several slots, conv_in's lora_A is re-laid out so the adapter reads only
    its slot ``condition_index`` (default 0); a file trained on the UNet's own N-slot layout reads them all. The
    slot is recorded, so per-condition scales follow slot order whatever the loading order. Stored alphas are
    folded into the weights. Afterwards the adapter is active at weight 1 and replaces the condition adapters
    that read one of its slots; other adapters (style LoRAs) keep their state. If the UNet already has an
    adapter of that name (training init, checkpoint resume), its weights are overwritten in place
    (:func:`assign_lora_weights`) and the active adapters are left as they are.
    """
    if not isinstance(source, (str, os.PathLike, Mapping)):
        sources = list(source)
        names = ([f"{adapter_name}_{i}" for i in range(len(sources))] if isinstance(adapter_name, str)
                 else list(adapter_name))
        indices = list(range(len(sources))) if condition_index is None else (
            [condition_index] if isinstance(condition_index, int) else list(condition_index))
        if not (len(names) == len(indices) == len(sources)):
            raise ValueError(f"load_control_lora: {len(sources)} sources, {len(names)} adapter names and "
                             f"{len(indices)} condition indices; give one of each per source")
        for item, name, index in zip(sources, names, indices):
            load_control_lora(unet, item, name, index, num_conditions, **file_kwargs)
        return
    if not isinstance(adapter_name, str):
        raise TypeError("load_control_lora: one source takes one adapter_name string")
    if condition_index is not None and not isinstance(condition_index, int):
        raise TypeError("load_control_lora: one source takes one condition_index")
    origin = "state dict" if isinstance(source, Mapping) else str(source)
    slots_in_unet = condition_count(unet)
    num_conditions = slots_in_unet if num_conditions is None else int(num_conditions)
    index = 0 if condition_index is None else condition_index
    if not 0 <= index < max(num_conditions, 1):
        raise ValueError(f"condition_index {index} is outside 0..{num_conditions - 1}")
    if slots_in_unet != num_conditions or num_conditions < 1:
        raise ValueError(
            f"UNet conv_in reads {slots_in_unet} condition(s), not {num_conditions}; "
            f"call widen_conv_in(unet, {max(num_conditions, 1)}) before loading"
        )
    state = read_control_lora(source, **file_kwargs)
    state, slots = _relayout_conv_in(state, latent_channels(unet), index, num_conditions, origin)
    if adapter_name in getattr(unet, "peft_config", {}):
        assign_lora_weights(unet, state, adapter_name, origin)
        return
    previous_active = active_adapter_names(unet)
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
    record_slots(unet, adapter_name, slots)
    activate_condition_adapter(unet, adapter_name, previous_active)


def assign_lora_weights(
    unet: nn.Module, state: Mapping[str, torch.Tensor], adapter_name: str, origin: str = "state dict"
) -> None:
    """Copy LoRA weights (peft keys, as from :func:`read_control_lora`) into an existing adapter, in place.

    Used to resume and to start fine-tuning: the adapter keeps its (optimizer-registered) parameters, only
    their values change. The file has alpha/r folded into lora_B, so lora_B is divided by the adapter's
    alpha/r. An adapter created with PiSSA takes the first half ``(A_t, B_t)`` of a doubled-rank file (the
    trainable part on top of the PiSSA residual that :func:`add_control_lora` rebuilt), as control-lora-v3
    does. Mismatched modules or shapes raise ``ValueError`` naming ``origin``.
    """
    layers = dict(lora_layers(unet, adapter_name))
    if not layers:
        raise ValueError(f"{origin}: the UNet has no adapter named {adapter_name!r}")
    in_file = {k.rsplit(".lora_", 1)[0] for k in state}
    missing, unexpected = sorted(set(layers) - in_file), sorted(in_file - set(layers))
    if missing or unexpected:
        raise ValueError(f"{origin}: LoRA layers differ from adapter {adapter_name!r} (preset?): missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
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
                    f"{adapter_name!r} ({tuple(target_a.shape)}/{tuple(target_b.shape)}; rank / conv_in_rank?)"
                )
            factor = module.lora_alpha[adapter_name] / rank
            target_a.copy_(a.to(target_a))
            target_b.copy_((b / factor if factor != 1.0 else b).to(target_b))


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
    layers = lora_layers(unet, "summary")
    params = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n and p.requires_grad)
    return {"modules": len(layers), "trainable_params": int(params)}


def lora_summary_from_file(path: str | Path, unet_config_path: str | Path | None = None) -> dict[str, Any]:
    """Layer count, parameter counts and sum of |weights| of a control-lora-v3 file.

    ``modules``, ``trainable_params`` (= ``stored_params``, every number in the file) and ``abs_sum`` as
    always; ``live_params`` is the parameter count of the adapter that trained it — half the stored count for a
    PiSSA file (saved at doubled rank, header ``lora_init: pissa*``), else the stored count — and ``lora_init``
    comes from the header (None without one). With ``unet_config_path`` every LoRA pair is also checked to fit
    that UNet (widened for the file's condition count): a missing layer or a shape mismatch raises
    ``ValueError`` naming the file.
    """
    state = read_control_lora(path)
    meta = read_control_lora_metadata(path) if not isinstance(path, Mapping) else {}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    if unet_config_path is not None:
        conv_in = state.get("conv_in.lora_A.weight")
        latent = int(_read_unet_config(unet_config_path).get("out_channels", 4))
        slots = max(conv_in.shape[1] // latent - 1, 1) if conv_in is not None else 1
        _check_fits(state, modules, _empty_widened_unet(unet_config_path, slots), str(path))
    stored = int(sum(v.numel() for v in state.values()))
    init = meta.get("lora_init")
    return {
        "modules": len(modules),
        "trainable_params": stored,
        "abs_sum": float(sum(v.double().abs().sum().item() for v in state.values())),
        "stored_params": stored,
        "live_params": stored // 2 if isinstance(init, str) and init.startswith("pissa") else stored,
        "lora_init": init,
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
