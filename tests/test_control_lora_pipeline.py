"""The Control-LoRA pipelines as diffusers citizens: several condition adapters in slot order beside a style LoRA,
stock ``load_lora_weights`` / ``fuse_lora`` interop, fused generation, the ControlNet and StableDiffusion call API.

Tiny model, 32 px, 4 DDIM steps, CFG 2, one torch thread. Measured max pixel differences (CPU, fp32, pixels in
[0, 1]): reverse slot order vs the single-adapter run 2.7e-7 to 4.8e-7; stock ``load_lora_weights`` vs
``load_control_lora`` 0 (bit-identical); fused (``fuse_control_lora`` or ``pipe.fuse_lora()``, with or without the
style LoRA) vs unfused 3.9e-7 to 5.1e-7; conditions off vs the stock pipeline 0. The asserts use 1e-5.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.callbacks import SDCFGCutoffCallback
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from hardgen.models.base_model import build_tiny_sd
from hardgen.models.control_lora import (
    LORA_WEIGHT_NAME,
    ControlLoraPipeline,
    ControlLoraXLPipeline,
    active_condition_adapters,
    add_control_lora,
    condition_slots,
    fuse_control_lora,
    fused_adapters,
    load_control_lora,
    save_control_lora,
    unfuse_control_lora,
    widen_conv_in,
)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
TOL = 1e-5
STYLE_WEIGHT = 0.7
ARGS = {"prompt": "a polyp", "num_inference_steps": 4, "guidance_scale": 2.0, "output_type": "np",
        "height": 32, "width": 32}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny-sd"
    build_tiny_sd(RESOURCES / "tiny-sd", out, seed=0)
    return out


def _pipe(tiny_dir: Path, n_slots: int | None, cls=ControlLoraPipeline, scheduler=DDIMScheduler):
    pipe = cls.from_pretrained(tiny_dir)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if n_slots:
        widen_conv_in(pipe.unet, n_slots)
    return pipe


def _lora_folder(tiny_dir: Path, out: Path, seed: int) -> Path:
    """A strong condition adapter (random lora_B), saved in hardgen's format."""
    unet = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet")
    widen_conv_in(unet, 1)
    add_control_lora(unet, "cond", "half_skip_attn", 4, 8)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=generator)
    save_control_lora(out, unet, "cond")
    return out


@pytest.fixture(scope="module")
def lora_dirs(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loras")
    return _lora_folder(tiny_dir, root / "seg", 1), _lora_folder(tiny_dir, root / "depth", 2)


@pytest.fixture(scope="module")
def style_lora(tiny_dir) -> dict[str, torch.Tensor]:
    """A plain diffusers LoRA (no conv_in) on attention projections and on layers the condition adapters use too."""
    unet = UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet")
    generator, state = torch.Generator().manual_seed(5), {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(("attn1.to_q", "attn1.to_v", "ff.net.2")):
            state[f"unet.{name}.lora_A.weight"] = torch.randn(2, module.in_features, generator=generator) * 0.3
            state[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, 2, generator=generator) * 0.3
    return state


def _condition(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((32, 32)) > 0.5).astype(np.uint8) * 255)


def _run(pipe, **kwargs) -> np.ndarray:
    return pipe(generator=torch.Generator().manual_seed(0), **{**ARGS, **kwargs}).images


def _max_diff(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x - y).max())


def _with_style(pipe, style_lora, conditions: list[str]):
    pipe.load_lora_weights(style_lora, adapter_name="style")
    pipe.set_adapters([*conditions, "style"], [1.0] * len(conditions) + [STYLE_WEIGHT])
    return pipe


@pytest.fixture(scope="module")
def rigs(tiny_dir, lora_dirs, style_lora):
    """Two condition adapters loaded in REVERSE slot order (depth → slot 1 first, seg → slot 0) plus a style LoRA;
    and the single-adapter pipelines (one slot, same adapter, same style LoRA) they must reproduce."""
    seg, depth = lora_dirs
    two = _pipe(tiny_dir, 2)
    load_control_lora(two.unet, depth, "depth", condition_index=1)
    load_control_lora(two.unet, seg, "seg", condition_index=0)
    _with_style(two, style_lora, ["seg", "depth"])
    singles = {}
    for name, folder in (("seg", seg), ("depth", depth)):
        single = _pipe(tiny_dir, 1)
        load_control_lora(single.unet, folder, name)
        singles[name] = _with_style(single, style_lora, [name])
    return two, singles


def _style_state(unet) -> tuple[set, set]:
    """(active adapters, distinct style scalings) over every layer."""
    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
    active = {name for layer in layers for name in layer.active_adapters}
    return active, {layer.scaling["style"] for layer in layers if "style" in layer.scaling}


# the adapter that is on, its scale and window; the other one is off by scale 0 or by a closed window
CASES = [
    ("seg", 1.0, (0.0, 1.0), "scale"),
    ("seg", 0.5, (0.0, 0.5), "window"),
    ("seg", 1.0, (0.5, 1.0), "scale"),
    ("depth", 1.0, (0.0, 1.0), "window"),
    ("depth", 0.5, (0.0, 0.5), "scale"),
    ("depth", 1.0, (0.5, 1.0), "window"),
]


@pytest.mark.parametrize(("on", "scale", "window", "off_by"), CASES)
def test_reverse_slot_order_with_a_style_lora_matches_the_single_adapter_run(rigs, on, scale, window, off_by):
    two, singles = rigs
    slot = {"seg": 0, "depth": 1}[on]
    conditions = [_condition(0), _condition(1)]
    scales = [0.0, 0.0] if off_by == "scale" else [1.0, 1.0]
    starts, ends = [0.0, 0.0], [0.0, 0.0]
    scales[slot], starts[slot], ends[slot] = scale, window[0], window[1]
    got = _run(two, condition=conditions, condition_scale=scales, control_guidance_start=starts,
               control_guidance_end=ends)
    expected = _run(singles[on], condition=conditions[slot], condition_scale=scale,
                    control_guidance_start=window[0], control_guidance_end=window[1])
    assert _max_diff(got, expected) < TOL
    # the style LoRA stayed on at its weight; the condition adapters are back at weight 1, all active
    assert _style_state(two.unet) == ({"seg", "depth", "style"}, {STYLE_WEIGHT})
    assert two.unet.conv_in.scaling == {"depth": 1.0, "seg": 1.0}


def test_both_conditions_and_the_style_lora_act_together(rigs, tiny_dir, style_lora):
    two, singles = rigs
    conditions = [_condition(0), _condition(1)]
    both = _run(two, condition=conditions)
    seg_only = _run(two, condition=conditions, condition_scale=[1.0, 0.0])
    assert _max_diff(both, seg_only) > 1e-3 and _max_diff(both, _run(singles["seg"], condition=conditions[0])) > 1e-3
    # conditions off: the stock (unwidened) pipeline with the same style LoRA, which does change the image
    off = _run(two, condition=conditions, condition_scale=0.0)
    stock = _pipe(tiny_dir, None, StableDiffusionPipeline)
    plain = _run(stock)
    stock.load_lora_weights(style_lora, adapter_name="style")
    stock.set_adapters(["style"], [STYLE_WEIGHT])
    assert _max_diff(off, _run(stock)) < TOL and _max_diff(off, plain) > 1e-3
    # condition_adapters picks the seg adapter for one call only; the style LoRA and depth stay as they were
    picked = _run(two, condition=conditions, condition_adapters=["seg"])
    assert _max_diff(picked, _run(singles["seg"], condition=conditions[0])) < TOL
    assert _style_state(two.unet) == ({"seg", "depth", "style"}, {STYLE_WEIGHT})
    np.testing.assert_array_equal(_run(two, condition=conditions), both)
    with pytest.raises(ValueError, match="read no condition"):
        two(condition=conditions, condition_adapters=["style"], **ARGS)
    with pytest.raises(ValueError, match="condition_scale: 3 values"):
        two(condition=conditions, condition_scale=[1.0, 1.0, 1.0], **ARGS)


def test_cross_attention_scale_scales_the_style_lora_only(rigs, tiny_dir, lora_dirs, style_lora):
    _, singles = rigs
    half = _run(singles["seg"], condition=_condition(0), cross_attention_kwargs={"scale": 0.5})
    reference = _with_style(_load(tiny_dir, lora_dirs[0]), style_lora, ["seg"])
    reference.set_adapters(["seg", "style"], [1.0, STYLE_WEIGHT * 0.5])
    assert _max_diff(half, _run(reference, condition=_condition(0))) < TOL  # seg stays at its condition_scale 1
    assert _style_state(singles["seg"].unet)[1] == {STYLE_WEIGHT}  # restored after the call


# ------------------------------------------------------------------------------- stock interop and fusing


def test_stock_load_lora_weights_and_fuse_lora_give_the_same_images(tiny_dir, lora_dirs, tmp_path):
    seg, _ = lora_dirs
    ours = _pipe(tiny_dir, 1)
    load_control_lora(ours.unet, seg, "seg")
    reference = _run(ours, condition=_condition(0))
    stock = _pipe(tiny_dir, 1)
    stock.load_lora_weights(seg, adapter_name="seg")  # the header's lora_adapter_metadata builds the LoraConfig
    assert condition_slots(stock.unet) == {"seg": (0,)}  # read off the conv_in weights
    assert _max_diff(_run(stock, condition=_condition(0)), reference) == 0.0
    # a released control-lora-v3 file has no header metadata: diffusers infers ranks, alpha = rank
    with safe_open(str(seg / LORA_WEIGHT_NAME), framework="pt") as handle:
        bare = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    save_file(bare, str(tmp_path / LORA_WEIGHT_NAME))
    released = _pipe(tiny_dir, 1)
    released.load_lora_weights(tmp_path)
    assert _max_diff(_run(released, condition=_condition(0)), reference) < TOL
    stock.fuse_lora()
    assert fused_adapters(stock.unet) == {"seg": 1.0}
    assert _max_diff(_run(stock, condition=_condition(0)), reference) < TOL
    stock.unfuse_lora()
    assert fused_adapters(stock.unet) == {} and _max_diff(_run(stock, condition=_condition(0)), reference) < TOL


class _Spy:
    """Counts calls of peft's adapter-switching methods (and diffusers' set_adapters) while installed."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        for owner, method in ((BaseTunerLayer, "set_adapter"), (LoraLayer, "set_scale"),
                              (UNet2DConditionModel, "set_adapters"), (UNet2DConditionModel, "set_adapter")):
            original = getattr(owner, method)

            def spy(*args, _original=original, _name=f"{owner.__name__}.{method}", **kwargs):
                self.calls.append(_name)
                return _original(*args, **kwargs)

            monkeypatch.setattr(owner, method, spy)


def test_fused_generation_equals_unfused_and_switches_nothing(tiny_dir, lora_dirs, style_lora, monkeypatch):
    seg, _ = lora_dirs
    pipe = _with_style(_load(tiny_dir, seg), style_lora, ["seg"])
    unfused = _run(pipe, condition=_condition(0))
    unfused_half = _run(pipe, condition=_condition(0), condition_scale=0.5)
    with pytest.raises(ValueError, match="share layers"):
        fuse_control_lora(pipe.unet, ["seg"])  # the style LoRA uses some of its layers and would be skipped
    assert sorted(fuse_control_lora(pipe.unet)) == ["seg", "style"]
    assert fused_adapters(pipe.unet) == pytest.approx({"seg": 1.0, "style": STYLE_WEIGHT})
    spy = _Spy(monkeypatch)
    fused = _run(pipe, condition=_condition(0))
    assert spy.calls == []  # a fused call walks no adapter switch at all
    assert _max_diff(fused, unfused) < TOL
    assert fused_adapters(pipe.unet) == pytest.approx({"seg": 1.0, "style": STYLE_WEIGHT})  # still merged
    for other in ({"condition_scale": 0.5}, {"control_guidance_end": 0.5}, {"control_guidance_start": 0.25}):
        with pytest.raises(ValueError, match="fused at scale 1"):
            pipe(condition=_condition(0), **other, **ARGS)
    with pytest.raises(ValueError, match="fused"):
        pipe(condition=_condition(0), cross_attention_kwargs={"scale": 0.5}, **ARGS)
    monkeypatch.undo()
    assert sorted(unfuse_control_lora(pipe.unet)) == ["seg", "style"]
    assert _max_diff(_run(pipe, condition=_condition(0), condition_scale=0.5), unfused_half) < TOL
    # fused at another scale: a call at that scale runs fused
    fuse_control_lora(pipe.unet, condition_scale=0.5)
    assert _max_diff(_run(pipe, condition=_condition(0), condition_scale=0.5), unfused_half) < TOL


def _load(tiny_dir: Path, folder: Path, name: str = "seg", n_slots: int = 1):
    pipe = _pipe(tiny_dir, n_slots)
    load_control_lora(pipe.unet, folder, name)
    return pipe


def test_unfused_call_at_full_scale_and_window_switches_nothing(tiny_dir, lora_dirs, monkeypatch):
    pipe = _load(tiny_dir, lora_dirs[0])
    spy = _Spy(monkeypatch)
    _run(pipe, condition=_condition(0))
    assert spy.calls == []
    _run(pipe, condition=_condition(0), control_guidance_end=0.5)  # the window switches the adapter off once
    assert spy.calls and pipe.unet.active_adapters() == ["seg"]


# ------------------------------------------------------------------------------------------ the call API


def test_a_controlnet_style_call_runs_unchanged(tiny_dir, lora_dirs):
    pipe = _load(tiny_dir, lora_dirs[0])
    seen = []

    def on_step_end(pipeline, step, timestep, tensors):
        seen.append((step, pipeline.num_timesteps, pipeline.guidance_scale, pipeline.do_classifier_free_guidance,
                     tuple(tensors)))
        return tensors

    controlnet = _run(pipe, image=_condition(0), controlnet_conditioning_scale=0.5, control_guidance_start=0.0,
                      control_guidance_end=1.0, callback_on_step_end=on_step_end,
                      callback_on_step_end_tensor_inputs=["latents"])
    ours = _run(pipe, condition=_condition(0), condition_scale=0.5)
    np.testing.assert_array_equal(controlnet, ours)
    assert seen == [(i, 4, 2.0, True, ("latents",)) for i in range(4)]
    assert (pipe.guidance_scale, pipe.num_timesteps, pipe.do_classifier_free_guidance, pipe.interrupt) == (
        2.0, 4, True, False)
    assert pipe.cross_attention_kwargs is None and pipe.guidance_rescale == 0.0

    def interrupt(pipeline, step, timestep, tensors):
        seen.append(step)
        pipeline._interrupt = True
        return tensors

    seen.clear()
    _run(pipe, image=_condition(0), callback_on_step_end=interrupt)
    assert seen == [0] and pipe.interrupt
    # diffusers' CFG cutoff callback halves prompt_embeds mid-run; the doubled condition latents follow
    cutoff = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=1)
    cut = _run(pipe, image=_condition(0), callback_on_step_end=cutoff)
    assert np.isfinite(cut).all() and _max_diff(cut, _run(pipe, image=_condition(0))) > 1e-4

    def edit(pipeline, step, timestep, tensors):
        return {"condition_latents": tensors["condition_latents"] * 0}

    zeroed = _run(pipe, image=_condition(0), callback_on_step_end=edit,
                  callback_on_step_end_tensor_inputs=["condition_latents"])
    assert _max_diff(zeroed, _run(pipe, image=_condition(0))) > 1e-4
    for bad in ({"image": _condition(0), "condition": _condition(0)},
                {"image": _condition(0), "condition_scale": 1.0, "controlnet_conditioning_scale": 1.0},
                {"image": _condition(0), "guess_mode": True},
                {"image": _condition(0), "control_guidance_start": 0.6, "control_guidance_end": 0.4}):
        with pytest.raises(ValueError):
            pipe(**bad, **ARGS)


@pytest.mark.parametrize(
    "extra",
    [
        {"timesteps": [999, 749, 499, 249], "num_inference_steps": None},
        {"sigmas": [14.6, 4.0, 1.5, 0.3], "num_inference_steps": None},
        {"guidance_rescale": 0.7},
        {"cross_attention_kwargs": {"scale": 0.5}},
    ],
    ids=["timesteps", "sigmas", "guidance_rescale", "lora_scale"],
)
def test_standard_arguments_match_the_stock_pipeline_with_conditions_off(tiny_dir, lora_dirs, style_lora, extra):
    pipe = _with_style(_load(tiny_dir, lora_dirs[0]), style_lora, ["seg"])
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    stock = _pipe(tiny_dir, None, StableDiffusionPipeline, EulerDiscreteScheduler)
    stock.load_lora_weights(style_lora, adapter_name="style")
    stock.set_adapters(["style"], [STYLE_WEIGHT])
    ours = _run(pipe, image=_condition(0), controlnet_conditioning_scale=0.0, **extra)
    assert _max_diff(ours, _run(stock, **extra)) < TOL
    assert pipe.num_timesteps == stock.num_timesteps >= 3
    assert _max_diff(_run(pipe, image=_condition(0), **extra), ours) > 1e-4  # the condition does act


def test_each_distinct_condition_is_encoded_once(tiny_dir, lora_dirs, monkeypatch):
    seg, depth = lora_dirs
    pipe = _pipe(tiny_dir, 2)
    load_control_lora(pipe.unet, [seg, depth], ["seg", "depth"])
    shared = _condition(3)
    batches = []
    encode = pipe.vae.encode

    def counting(pixels, *args, **kwargs):
        batches.append(pixels.shape[0])
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(pipe.vae, "encode", counting)
    args = {**ARGS, "prompt": ["a polyp", "a polyp"], "num_images_per_prompt": 2}
    once = pipe(condition=[shared, shared], generator=torch.Generator().manual_seed(0), **args).images
    assert batches == [1]  # one VAE call, one image: the same object fills both slots and all four rows
    batches.clear()
    other = _condition(3)  # equal pixels, another object: encoded separately, same result
    twice = pipe(condition=[shared, other], generator=torch.Generator().manual_seed(0), **args).images
    assert batches == [2] and _max_diff(once, twice) < TOL
    assert active_condition_adapters(pipe.unet) == ["seg", "depth"]


# ------------------------------------------------------------------------------------------------- SDXL


def _tiny_sdxl_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
    ).eval()


def test_sdxl_standard_arguments_match_the_stock_pipeline(tiny_dir):
    vae = AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae")
    scheduler = EulerDiscreteScheduler.from_pretrained(tiny_dir, subfolder="scheduler")
    base = _tiny_sdxl_unet()
    unet = widen_conv_in(copy.deepcopy(base), 1)
    add_control_lora(unet, "cond", "half", 4, 8)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    parts = {"vae": vae, "text_encoder": None, "text_encoder_2": None, "tokenizer": None, "tokenizer_2": None,
             "scheduler": scheduler, "add_watermarker": False}
    pipe, stock = ControlLoraXLPipeline(unet=unet, **parts), StableDiffusionXLPipeline(unet=base, **parts)
    for p in (pipe, stock):
        p.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    embeds = {"prompt_embeds": torch.randn(1, 77, 64, generator=g),
              "negative_prompt_embeds": torch.randn(1, 77, 64, generator=g),
              "pooled_prompt_embeds": torch.randn(1, 32, generator=g),
              "negative_pooled_prompt_embeds": torch.randn(1, 32, generator=g)}
    args = {**{k: v for k, v in ARGS.items() if k != "prompt"}, **embeds, "denoising_end": 0.6,
            "guidance_rescale": 0.5, "negative_original_size": (16, 16), "negative_target_size": (48, 48)}
    steps = []
    reference = stock(generator=torch.Generator().manual_seed(0), **args).images
    off = pipe(image=_condition(0), controlnet_conditioning_scale=0.0, generator=torch.Generator().manual_seed(0),
               callback_on_step_end=lambda p, i, t, x: steps.append(i) or x, **args).images
    assert _max_diff(off, reference) < TOL
    assert steps == [0, 1] and pipe.num_timesteps == 2 and pipe.denoising_end == 0.6  # 0.6 of 4 steps
    on = pipe(image=_condition(0), generator=torch.Generator().manual_seed(0), **args).images
    assert _max_diff(on, reference) > 1e-3
    windowed = pipe(image=_condition(0), control_guidance_end=0.25, generator=torch.Generator().manual_seed(0),
                    **args).images
    assert _max_diff(windowed, on) > 1e-5 and _max_diff(windowed, reference) > 1e-5
    assert json.dumps(pipe.unet.conv_in.scaling) == '{"cond": 1.0}'
