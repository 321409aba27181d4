"""Which adapters are condition adapters, their per-condition scales and windows, and fusing them.

Rules (the pipelines and :func:`set_condition_scales` follow them):

* A *condition adapter* has a LoRA layer on ``conv_in``; it reads the condition slot(s) recorded when it was
  created or loaded, else the slots whose ``conv_in`` lora_A slice is non-zero (a stock
  ``pipe.load_lora_weights`` load). Every other adapter (a style LoRA) is left alone: its own weight, its
  active state, during and after a call.
* Per-condition scales and guidance windows are indexed by condition *slot*, never by loading order.
* Scales and active sets are set per layer with peft's public layer API (``set_adapter``, ``set_scale``), so
  other adapters keep their state; a call restores every scale, active set and ``requires_grad`` it changed.
* A fused adapter (``fuse_control_lora`` or stock ``pipe.fuse_lora()``) is never touched: peft computes a merged
  layer as its base weight only, and its ``set_adapters`` unmerges merged layers. A call may use it only at
  the weight it was fused with over the whole schedule; anything else raises ``ValueError``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence

from diffusers import UNet2DConditionModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from hardgen.models.control_lora.model import (
    condition_count,
    latent_channels,
    recorded_slots,
)


def _tuner_layers(unet: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def _known(unet: nn.Module) -> list[str]:
    return list(getattr(unet, "peft_config", {}) or {})


def active_adapter_names(unet: nn.Module) -> list[str]:
    """The active adapters, in loading order (union over layers, so a half-switched UNet reports them all)."""
    known = _known(unet)
    seen = {name for layer in _tuner_layers(unet) for name in layer.active_adapters}
    return [name for name in known if name in seen]


def _lora_weight(layer: LoraLayer, name: str) -> float:
    """The user-facing weight of ``name`` on a layer: its scaling over the config's alpha/r."""
    base = layer.lora_alpha[name] / (math.sqrt(layer.r[name]) if layer.use_rslora.get(name, False) else layer.r[name])
    return float(layer.scaling[name] / base)


@contextlib.contextmanager
def _keep_requires_grad(unet: nn.Module) -> Iterator[None]:
    """peft's ``set_adapter`` makes active adapters trainable; switching for inference must not."""
    flags = [(p, p.requires_grad) for n, p in unet.named_parameters() if ".lora_" in n]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def _set_active(unet: nn.Module, names: Sequence[str]) -> None:
    """Make exactly ``names`` active on every tuner layer (layer API: merged layers stay merged)."""
    names = list(names)
    with _keep_requires_grad(unet):
        for layer in _tuner_layers(unet):
            layer.set_adapter(names)


def condition_slots(unet: UNet2DConditionModel) -> dict[str, tuple[int, ...]]:
    """Condition adapter → the condition slot(s) it reads, for every condition adapter on the UNet."""
    conv = getattr(unet, "conv_in", None)
    if not isinstance(conv, LoraLayer):
        return {}
    n_slots, latent = condition_count(unet), latent_channels(unet)
    out: dict[str, tuple[int, ...]] = {}
    for name in _known(unet):
        if name not in conv.lora_A:
            continue
        slots = recorded_slots(unet, name)
        if slots is None:
            weight = conv.lora_A[name].weight.detach()
            slots = tuple(
                i for i in range(n_slots)
                if weight[:, latent * (1 + i): latent * (2 + i)].abs().sum().item() > 0
            ) or tuple(range(n_slots))
        out[name] = slots
    return out


def active_condition_adapters(unet: UNet2DConditionModel) -> list[str]:
    """Active condition adapters in slot order (then loading order); [] when there are none."""
    slots, known = condition_slots(unet), _known(unet)
    active = [name for name in active_adapter_names(unet) if name in slots]
    return sorted(active, key=lambda name: (slots[name], known.index(name)))


def fused_adapters(unet: nn.Module) -> dict[str, float]:
    """Adapters merged into the base weights → the weight they were merged with."""
    fused: dict[str, float] = {}
    for layer in _tuner_layers(unet):
        if isinstance(layer, LoraLayer):
            for name in layer.merged_adapters:
                fused.setdefault(name, _lora_weight(layer, name))
    return fused


def per_condition(value: float | Sequence[float], n_slots: int, argument: str) -> list[float]:
    """One float per condition slot from a float or a sequence of ``n_slots`` floats."""
    if isinstance(value, numbers.Real):
        return [float(value)] * n_slots
    values = [float(v) for v in value]
    if len(values) != n_slots:
        raise ValueError(f"{argument}: {len(values)} values for {n_slots} condition slot(s)")
    return values


def window_keep(step: int, n_steps: int, start: float, end: float) -> float:
    """1 inside the [start, end] fraction of the schedule, else 0 (diffusers' ControlNet ``controlnet_keep`` rule)."""
    return 0.0 if (step / n_steps < start or (step + 1) / n_steps > end) else 1.0


def _check_names(unet: nn.Module, names: Sequence[str], argument: str) -> None:
    known = _known(unet)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"{argument}: unknown adapter(s) {unknown}; the UNet has {known}")


def _slot_values(name: str, slots: tuple[int, ...], values: list[tuple], argument: str) -> tuple:
    """The one (scale, start, end) of an adapter that reads several slots jointly."""
    found = {values[s] for s in slots}
    if len(found) > 1:
        raise ValueError(
            f"{argument}: adapter {name!r} reads condition slots {list(slots)} jointly and needs one value for them, "
            f"got {sorted(found)}"
        )
    return found.pop()


def _shared_layer_conflicts(unet: nn.Module, fused: Sequence[str], running: Sequence[str]) -> list[str]:
    """Running, unfused adapters that share a layer with a fused one (peft would silently skip them there)."""
    fused, running = set(fused), set(running)
    out = set()
    for layer in _tuner_layers(unet):
        if isinstance(layer, LoraLayer) and set(layer.lora_A) & fused:
            out |= {name for name in layer.lora_A if name in running and name not in fused}
    return sorted(out)


def set_condition_scales(unet: UNet2DConditionModel, scales: Mapping[str, float]) -> None:
    """Activate exactly the named condition adapters at the given strengths (scale 0 ⇒ that adapter is a no-op).

    Condition adapters not named are deactivated; every other adapter (a style LoRA) keeps its active state
    and weight. A named non-condition adapter gets the given weight and is activated too. A fused adapter
    cannot change weight (``ValueError``); ``requires_grad`` is left as it was.
    """
    names = list(scales)
    _check_names(unet, names, "set_condition_scales")
    slots, fused = condition_slots(unet), fused_adapters(unet)
    for name, scale in scales.items():
        if name in fused and not math.isclose(float(scale), fused[name], rel_tol=1e-6, abs_tol=1e-9):
            raise ValueError(
                f"set_condition_scales: adapter {name!r} is fused at weight {fused[name]:g}; "
                f"unfuse_control_lora(unet) before setting {float(scale):g}"
            )
    unfused_conditions = [name for name in fused if name in slots and name not in scales]
    if unfused_conditions:
        raise ValueError(
            f"set_condition_scales: fused condition adapter(s) {unfused_conditions} cannot be switched off"
        )
    keep = [name for name in active_adapter_names(unet) if name not in slots and name not in scales]
    _set_active(unet, keep + names)
    for layer in _tuner_layers(unet):
        if isinstance(layer, LoraLayer):
            for name, scale in scales.items():
                if name not in fused:
                    layer.set_scale(name, float(scale))


def activate_condition_adapter(unet: UNet2DConditionModel, adapter_name: str, previous_active: Sequence[str]) -> None:
    """After loading ``adapter_name``: it joins ``previous_active`` at weight 1, replacing the condition adapters
    that read one of its slots (so loading onto a slot switches that slot); other adapters stay as they were."""
    slots = condition_slots(unet)
    mine = set(slots.get(adapter_name, ()))
    keep = [name for name in previous_active if name != adapter_name and not (mine & set(slots.get(name, ())))]
    _set_active(unet, keep + [adapter_name])
    for layer in _tuner_layers(unet):
        if isinstance(layer, LoraLayer):
            layer.set_scale(adapter_name, 1.0)


# ------------------------------------------------------------------------------------------------ fusing


def fuse_control_lora(
    unet: UNet2DConditionModel,
    adapter_names: Sequence[str] | None = None,
    condition_scale: float | Sequence[float] = 1.0,
) -> list[str]:
    """Merge adapters into the UNet's base weights (peft ``merge``); returns the names fused.

    ``adapter_names`` defaults to every active adapter. Condition adapters are fused at ``condition_scale``
    (one float or one per condition slot), other adapters at their current weight. A pipeline call then runs
    the fused layers at full speed, touching no adapter state, as long as it asks for each fused condition
    adapter at its fused scale over the full guidance window [0, 1]. An active adapter left out that shares a
    layer with a fused one is refused (peft computes a merged layer as its base weight only and would skip
    it). Undo with :func:`unfuse_control_lora`.
    """
    names = list(dict.fromkeys(adapter_names)) if adapter_names is not None else active_adapter_names(unet)
    _check_names(unet, names, "fuse_control_lora")
    if not names:
        raise ValueError("fuse_control_lora: the UNet has no active adapter to fuse")
    slots, fused = condition_slots(unet), fused_adapters(unet)
    scales = per_condition(condition_scale, max(condition_count(unet), 1), "condition_scale")
    weights = {
        name: _slot_values(name, slots[name], [(s,) for s in scales], "condition_scale")[0]
        for name in names if name in slots and name not in fused
    }
    left_out = [name for name in active_adapter_names(unet) if name not in names and name not in fused]
    conflicts = _shared_layer_conflicts(unet, names, left_out)
    if conflicts:
        raise ValueError(
            f"fuse_control_lora: active adapter(s) {conflicts} share layers with {names}; peft would skip them on the "
            f"fused layers: fuse them too (adapter_names=None fuses every active adapter) or deactivate them"
        )
    to_fuse = [name for name in names if name not in fused]
    for layer in _tuner_layers(unet):
        if not isinstance(layer, LoraLayer):
            continue
        for name, weight in weights.items():
            layer.set_scale(name, weight)
        here = [name for name in to_fuse if name in layer.lora_A]
        if here:
            layer.merge(adapter_names=here)
    return names


def unfuse_control_lora(unet: UNet2DConditionModel) -> list[str]:
    """Unmerge every fused adapter (``fuse_control_lora`` or ``pipe.fuse_lora()``); returns their names."""
    names = list(fused_adapters(unet))
    for layer in _tuner_layers(unet):
        if layer.merged:
            layer.unmerge()
    return names


# ---------------------------------------------------------------------------------- per-call schedule


class ConditionSchedule:
    """The adapter state of one pipeline call: per-step condition weights, restored on exit.

    ``scales``, ``starts`` and ``ends`` hold one value per condition slot. ``adapters`` are the condition
    adapters of the call (default: the active ones plus any fused ones). At step ``i`` each of them runs at
    ``scale[slot] · window_keep(i)``; a weight of 0 deactivates it for that step (the layer then computes the
    base output exactly, without the LoRA matmuls). Other adapters stay active at their own weight times
    ``other_scale`` (``cross_attention_kwargs["scale"]``). Nothing is written while the wanted state equals the
    UNet's current one, so a fused call, or a plain call at scale 1 over the full window, switches nothing.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scales: Sequence[float],
        starts: Sequence[float],
        ends: Sequence[float],
        n_steps: int,
        adapters: Sequence[str] | None = None,
        other_scale: float = 1.0,
    ) -> None:
        self.unet = unet
        slots, known = condition_slots(unet), _known(unet)
        active, fused = active_adapter_names(unet), fused_adapters(unet)
        if adapters is None:
            use = [name for name in known if name in slots and (name in active or name in fused)]
        else:
            use = list(dict.fromkeys(adapters))
            _check_names(unet, use, "condition_adapters")
            odd = [name for name in use if name not in slots]
            if odd:
                raise ValueError(f"condition_adapters: {odd} read no condition (no conv_in LoRA); "
                                 f"the condition adapters are {list(slots)}")
        values = list(zip(scales, starts, ends))
        self.plan: dict[str, list[float]] = {}
        for name in sorted(use, key=lambda a: (slots[a], known.index(a))):
            scale, start, end = _slot_values(name, slots[name], values, "condition_scale / control_guidance_start/end")
            self.plan[name] = [scale * window_keep(i, n_steps, start, end) for i in range(n_steps)]
        self.others = [name for name in active if name not in slots]
        self.other_scale = float(other_scale)
        self.fused = set(fused)
        for name, weight in fused.items():
            if name in slots and name not in self.plan:
                raise ValueError(f"condition_adapters: adapter {name!r} is fused into the UNet and cannot be left out; "
                                 f"unfuse_control_lora(unet) first")
            off = name in self.plan and any(not math.isclose(w, weight, rel_tol=1e-6, abs_tol=1e-9)
                                            for w in self.plan[name])
            if off:
                raise ValueError(
                    f"adapter {name!r} (condition slot {list(slots[name])}) is fused at scale {weight:g} over the "
                    f"whole schedule; this call asks for other scales or a guidance window. unfuse_control_lora(unet) "
                    f"(or pipe.unfuse_lora()) first, or call with that scale and control_guidance_start/end = 0/1"
                )
            if name not in slots and self.other_scale != 1.0:
                raise ValueError(f"cross_attention_kwargs['scale']: adapter {name!r} is fused and cannot be rescaled")
        running = self.others + [name for name in self.plan if any(self.plan[name])]
        conflicts = _shared_layer_conflicts(unet, list(fused), running)
        if conflicts:
            raise ValueError(
                f"adapter(s) {conflicts} share layers with the fused adapter(s) {sorted(fused)} and would be skipped "
                f"there (peft runs a merged layer's base weight only); fuse them too or deactivate them"
            )
        self._current = self._state_now()
        self._snapshot: list[tuple[BaseTunerLayer, list[str], dict[str, float] | None]] | None = None
        self._grads: list[tuple[nn.Parameter, bool]] = []

    def _state_now(self) -> tuple[frozenset, tuple] | None:
        """The UNet's state in the schedule's terms; None when the layers disagree (then the first step writes)."""
        layers = _tuner_layers(self.unet)
        actives = {tuple(sorted(layer.active_adapters)) for layer in layers}
        if len(actives) > 1:
            return None
        weights: dict[str, set[float]] = {}
        for layer in layers:
            if isinstance(layer, LoraLayer):
                for name in self.plan:
                    if name in layer.scaling and name not in self.fused:
                        weights.setdefault(name, set()).add(round(_lora_weight(layer, name), 9))
        if any(len(w) > 1 for w in weights.values()):
            return None
        active = frozenset(actives.pop()) if actives else frozenset()
        return active, tuple(sorted((name, w.pop()) for name, w in weights.items() if name in active))

    def _wanted(self, step: int) -> tuple[frozenset, tuple]:
        on = [name for name, weights in self.plan.items() if name in self.fused or weights[step] != 0.0]
        scales = tuple(sorted((name, round(self.plan[name][step], 9)) for name in on if name not in self.fused))
        return frozenset(self.others + on), scales

    def step(self, step: int) -> None:
        """Bring the UNet to step ``step``'s state (no layer is touched when it is already there)."""
        wanted = self._wanted(step)
        if self._snapshot is None and self.other_scale != 1.0:
            self._take_snapshot()
            for layer in _tuner_layers(self.unet):
                if isinstance(layer, LoraLayer):
                    for name in self.others:
                        if name in layer.scaling:
                            layer.scaling[name] *= self.other_scale
        if wanted == self._current:
            return
        if self._snapshot is None:
            self._take_snapshot()
        active, scales = wanted
        order = [name for name in _known(self.unet) if name in active]
        switch = self._current is None or self._current[0] != active
        for layer in _tuner_layers(self.unet):
            if switch:
                layer.set_adapter(order)
            if isinstance(layer, LoraLayer):
                for name, weight in scales:
                    layer.set_scale(name, weight)
        self._current = wanted

    def _take_snapshot(self) -> None:
        self._grads = [(p, p.requires_grad) for n, p in self.unet.named_parameters() if ".lora_" in n]
        self._snapshot = [
            (layer, list(layer.active_adapters), dict(layer.scaling) if isinstance(layer, LoraLayer) else None)
            for layer in _tuner_layers(self.unet)
        ]

    def restore(self) -> None:
        """Put back every active set, scale and requires_grad flag the call changed."""
        if self._snapshot is None:
            return
        for layer, active, scaling in self._snapshot:
            layer.set_adapter(active)
            if scaling is not None:
                for name, value in scaling.items():
                    layer.scaling[name] = value
        for param, flag in self._grads:
            param.requires_grad_(flag)
        self._snapshot, self._grads = None, []
        self._current = self._state_now()

    def __enter__(self) -> ConditionSchedule:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


__all__ = [
    "ConditionSchedule",
    "activate_condition_adapter",
    "active_condition_adapters",
    "condition_slots",
    "fuse_control_lora",
    "fused_adapters",
    "per_condition",
    "set_condition_scales",
    "unfuse_control_lora",
    "window_keep",
]
