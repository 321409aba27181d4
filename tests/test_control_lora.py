"""Control-LoRA on stock diffusers/peft: widening, presets, inits, file format, save/load, slots, pipelines.

The pipeline API (several adapters, style LoRAs, stock interop, fusing) is in test_control_lora_pipeline.py.
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
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from peft import LoraConfig
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hardgen.core.weights import UnsafeWeightsError
from hardgen.models.base_model import build_tiny_sd
from hardgen.models.control_lora import (
    LORA_ADAPTER_METADATA_KEY,
    LORA_WEIGHT_NAME,
    METADATA_KEY,
    MODEL_CARD_NAME,
    ControlLoraPipeline,
    ControlLoraXLPipeline,
    active_condition_adapters,
    add_control_lora,
    condition_count,
    condition_slots,
    control_lora_state_dict,
    encode_condition,
    latent_channels,
    load_control_lora,
    lora_summary,
    lora_summary_from_file,
    pissa_initial_factors,
    read_control_lora,
    read_control_lora_metadata,
    save_control_lora,
    set_condition_scales,
    target_modules,
    widen_conv_in,
)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
SD15_UNET = RESOURCES / "sd15-unet" / "config.json"
TINY_UNET = RESOURCES / "tiny-sd" / "unet" / "config.json"

# Small ranks keep the tiny model fast; conv_in gets a larger rank like the real setting.
RANK, CONV_IN_RANK = 4, 8


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny-sd"
    build_tiny_sd(RESOURCES / "tiny-sd", out, seed=0)
    return out


@pytest.fixture(scope="module")
def base_unet(tiny_dir) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(tiny_dir, subfolder="unet").eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(1, 4, 16, 16, generator=g),
        "c1": torch.randn(1, 4, 16, 16, generator=g),
        "c2": torch.randn(1, 4, 16, 16, generator=g),
        "text": torch.randn(1, 77, 32, generator=g),
        "t": torch.tensor([400]),
    }


def run(unet: UNet2DConditionModel, inputs: dict, *conditions: str) -> torch.Tensor:
    sample = torch.cat([inputs["x"], *(inputs[c] for c in conditions)], dim=1)
    with torch.no_grad():
        return unet(sample, inputs["t"], encoder_hidden_states=inputs["text"]).sample


def widened(base: UNet2DConditionModel, n: int = 1) -> UNet2DConditionModel:
    return widen_conv_in(copy.deepcopy(base), n)


def train_steps(unet: UNet2DConditionModel, inputs: dict, condition: str, seed: int, steps: int = 1) -> None:
    """A few real AdamW steps on the LoRA parameters (what a trained adapter looks like)."""
    torch.manual_seed(seed)
    params = [p for p in unet.parameters() if p.requires_grad]
    assert params and all(".lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(params, lr=2e-2)
    sample = torch.cat([inputs["x"], inputs[condition]], dim=1)
    target = torch.randn_like(inputs["x"])
    for _ in range(steps):
        pred = unet(sample, inputs["t"], encoder_hidden_states=inputs["text"]).sample
        torch.nn.functional.mse_loss(pred, target).backward()
        optimizer.step()
        optimizer.zero_grad()
    unet.eval()


def trained_adapter(base, inputs, name: str, condition: str, seed: int, init: str = "gaussian"):
    unet = widened(base)
    add_control_lora(unet, name, "half", RANK, CONV_IN_RANK, init)
    train_steps(unet, inputs, condition, seed)
    return unet


# --------------------------------------------------------------------------------------------- widening


def test_widen_conv_in_zero_condition_weights_keep_base_output(base_unet, inputs):
    reference = run(base_unet, inputs)
    unet = widened(base_unet)
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    assert latent_channels(unet) == 4 and condition_count(unet) == 1
    assert torch.equal(unet.conv_in.weight[:, 4:], torch.zeros_like(unet.conv_in.weight[:, 4:]))
    assert torch.equal(unet.conv_in.bias, base_unet.conv_in.bias)
    torch.testing.assert_close(run(unet, inputs, "c1"), reference, rtol=0, atol=1e-6)
    widen_conv_in(unet, 1)  # idempotent
    assert unet.conv_in.in_channels == 8
    widen_conv_in(unet, 2)
    assert unet.conv_in.in_channels == 12 and condition_count(unet) == 2
    with pytest.raises(ValueError, match="already has"):
        widen_conv_in(unet, 1)
    with pytest.raises(ValueError, match="num_conditions"):
        widen_conv_in(widened(base_unet), 0)


def test_widen_after_lora_is_refused(base_unet):
    unet = widened(base_unet)
    add_control_lora(unet, "a", "half_skip_attn", RANK, CONV_IN_RANK)
    with pytest.raises(ValueError, match="before adding"):
        widen_conv_in(unet, 2)


def test_lora_needs_widened_unet(base_unet):
    with pytest.raises(ValueError, match="widen_conv_in"):
        add_control_lora(copy.deepcopy(base_unet), "a", "half", RANK, CONV_IN_RANK)


def test_widened_unet_save_pretrained_round_trip(base_unet, inputs, tmp_path):
    unet = widened(base_unet)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:].normal_()  # make the condition slot matter for this check
    unet.save_pretrained(tmp_path / "unet")
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert reloaded.conv_in.in_channels == 8 and reloaded.config.in_channels == 8
    assert latent_channels(reloaded) == 4
    assert torch.equal(reloaded.conv_in.weight, unet.conv_in.weight)
    torch.testing.assert_close(run(reloaded, inputs, "c1"), run(unet, inputs, "c1"), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- presets


def test_presets_select_the_documented_layers(base_unet):
    unet = widened(base_unet)
    all_layers = {n for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    full = target_modules(unet, "full")
    half = target_modules(unet, "half")
    full_skip = target_modules(unet, "full_skip_attn")
    half_skip = target_modules(unet, "half_skip_attn")
    assert set(full) == all_layers
    assert set(half) == {n for n in full if "up_blocks" not in n and "conv_out" not in n}
    attention = ("to_q", "to_k", "to_v", "to_out.0")
    assert set(full_skip) == {n for n in full if not n.endswith(attention)}
    assert set(half_skip) == set(half) & set(full_skip)
    assert all("conv_in" in names for names in (full, half, full_skip, half_skip))
    assert any(n.endswith("to_q") for n in half) and any("up_blocks" in n for n in full)


def test_tiny_half_skip_attn_matches_reference_count():
    # counted with the original control-lora-v3 code on the same tiny (32, 64) UNet (reference note §4.2)
    assert lora_summary(TINY_UNET, "half_skip_attn", 16, 64) == {"modules": 35, "trainable_params": 190_464}


@pytest.mark.parametrize(
    ("preset", "modules", "params"),
    [
        ("half_skip_attn", 66, 5_447_168),
        ("half", 122, 6_909_440),
        ("full_skip_attn", 154, 13_762_112),
        ("full", 282, 16_950_848),
    ],
)
def test_sd15_parity_with_control_lora_v3(preset, modules, params):
    assert lora_summary(SD15_UNET, preset, 16, 64) == {"modules": modules, "trainable_params": params}


def test_summary_counts_equal_the_live_adapter(base_unet):
    unet = widened(base_unet)
    add_control_lora(unet, "a", "full", RANK, CONV_IN_RANK)
    params = sum(p.numel() for n, p in unet.named_parameters() if p.requires_grad)
    summary = lora_summary(TINY_UNET, "full", RANK, CONV_IN_RANK)
    assert summary["trainable_params"] == params
    assert summary["modules"] == len(target_modules(base_unet, "full"))


def test_bad_preset_rank_and_init_name_their_config_keys(base_unet):
    unet = widened(base_unet)
    with pytest.raises(ValueError, match="lora.preset"):
        target_modules(unet, "quarter")
    with pytest.raises(ValueError, match="lora.init"):
        add_control_lora(unet, "a", "half", RANK, CONV_IN_RANK, init="olora")
    with pytest.raises(ValueError, match="lora.rank"):
        add_control_lora(unet, "a", "half", 0, CONV_IN_RANK)


# ------------------------------------------------------------------------------------------------ inits


def test_gaussian_init_equals_base_exactly(base_unet, inputs):
    unet = widened(base_unet)
    reference = run(unet, inputs, "c1")
    config = add_control_lora(unet, "a", "half_skip_attn", RANK, CONV_IN_RANK)
    assert config.r == RANK and config.lora_alpha == RANK
    assert unet.conv_in.lora_A["a"].weight.shape == (CONV_IN_RANK, 8, 3, 3)
    assert unet.conv_in.scaling["a"] == 1.0
    assert torch.equal(run(unet, inputs, "c1"), reference)


def _effective_weight(module, adapter: str) -> torch.Tensor:
    base = module.get_base_layer().weight.detach()
    a, b = module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach()
    delta = b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1)
    return base + module.scaling[adapter] * delta.reshape(base.shape)


def test_pissa_low_rank_svd_keeps_the_base_output(base_unet, inputs):
    original = widened(base_unet)
    unet = copy.deepcopy(original)
    add_control_lora(unet, "p", "half_skip_attn", RANK, CONV_IN_RANK, "pissa_niter_2")
    factors = pissa_initial_factors(unet, "p")
    assert factors and all(b.abs().sum() > 0 for _, b in factors.values())
    torch.testing.assert_close(run(unet, inputs, "c1"), run(original, inputs, "c1"), rtol=0, atol=1e-5)


def test_pissa_keeps_effective_weights_and_saves_doubled_rank(base_unet, inputs):
    init = "pissa"
    original = widened(base_unet)
    unet = copy.deepcopy(original)
    add_control_lora(unet, "p", "half", RANK, CONV_IN_RANK, init)
    factors = pissa_initial_factors(unet, "p")
    layers = dict(unet.named_modules())
    conv_layers = [n for n in factors if isinstance(layers[n].get_base_layer(), torch.nn.Conv2d)]
    linear_layers = [n for n in factors if isinstance(layers[n].get_base_layer(), torch.nn.Linear)]
    assert conv_layers and linear_layers
    originals = dict(original.named_modules())
    for name in conv_layers[:3] + linear_layers[:3]:
        # the adapter holds principal components (B != 0), the base holds the residual, the sum is unchanged
        assert layers[name].lora_B["p"].weight.abs().sum() > 0
        assert not torch.allclose(layers[name].get_base_layer().weight, originals[name].weight)
        torch.testing.assert_close(_effective_weight(layers[name], "p"), originals[name].weight, rtol=0, atol=1e-5)
    torch.testing.assert_close(run(unet, inputs, "c1"), run(original, inputs, "c1"), rtol=0, atol=1e-5)

    train_steps(unet, inputs, "c1", seed=1)
    trained = run(unet, inputs, "c1")
    assert (trained - run(original, inputs, "c1")).abs().max() > 1e-3  # training changed the output

    state = control_lora_state_dict(unet, "p")
    some_linear = linear_layers[0]
    assert state[f"unet.{some_linear}.lora_A.weight"].shape[0] == 2 * RANK
    assert state["unet.conv_in.lora_A.weight"].shape[0] == 2 * CONV_IN_RANK
    fresh = copy.deepcopy(original)  # the ORIGINAL base weights, never the PiSSA residual
    load_control_lora(fresh, state, "p")
    torch.testing.assert_close(run(fresh, inputs, "c1"), trained, rtol=0, atol=1e-5)

    # resuming into a PiSSA-initialised adapter takes the trained half of the doubled-rank file
    # (exact SVD is deterministic, so the rebuilt residual is the one the adapter was trained on)
    resumed = copy.deepcopy(original)
    add_control_lora(resumed, "p", "half", RANK, CONV_IN_RANK, init)
    load_control_lora(resumed, state, "p")
    torch.testing.assert_close(run(resumed, inputs, "c1"), trained, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_reproduces_the_trained_unet(base_unet, inputs, tmp_path):
    unet = trained_adapter(base_unet, inputs, "cond", "c1", seed=2)
    trained = run(unet, inputs, "c1")
    assert (trained - run(base_unet, inputs)).abs().max() > 1e-3
    path = save_control_lora(tmp_path / "lora", unet, "cond")
    assert path == tmp_path / "lora" / LORA_WEIGHT_NAME
    assert [p.name for p in path.parent.iterdir()] == [LORA_WEIGHT_NAME]  # no temp file left behind
    saved = load_file(str(path))
    assert all(k.startswith("unet.") for k in saved) and not any("alpha" in k for k in saved)
    assert saved["unet.conv_in.lora_A.weight"].shape == (CONV_IN_RANK, 8, 3, 3)
    # attention projections use diffusers' spelling (.lora.down/.up), like control-lora-v3's files
    assert any(k.endswith("to_q.lora.down.weight") for k in saved)
    assert set(read_control_lora(path)) == {k.removeprefix("unet.") for k in get_peft_keys(unet, "cond")}

    fresh = widened(base_unet)
    load_control_lora(fresh, path.parent, "cond")  # a folder works like its weight file
    torch.testing.assert_close(run(fresh, inputs, "c1"), trained, rtol=0, atol=1e-6)
    assert fresh.conv_in.scaling["cond"] == 1.0 and fresh.conv_in.r["cond"] == CONV_IN_RANK

    summary = lora_summary_from_file(path, TINY_UNET)
    assert summary["modules"] == len(target_modules(base_unet, "half"))
    assert summary["trainable_params"] == sum(v.numel() for v in saved.values())
    assert summary["abs_sum"] == pytest.approx(sum(float(v.abs().sum()) for v in saved.values()), rel=1e-6)


def get_peft_keys(unet, adapter: str) -> list[str]:
    from peft import get_peft_model_state_dict

    return list(get_peft_model_state_dict(unet, adapter_name=adapter))


@pytest.fixture(scope="module")
def adapter_pair(base_unet, inputs) -> tuple[UNet2DConditionModel, UNet2DConditionModel]:
    """Two independently trained single-condition UNets: adapter "a" on condition c1, "b" on c2."""
    return (
        trained_adapter(base_unet, inputs, "a", "c1", seed=3),
        trained_adapter(base_unet, inputs, "b", "c2", seed=4),
    )


def test_two_conditions_at_one_zero_scales_equal_each_single_model(base_unet, inputs, adapter_pair):
    unet_a, unet_b = adapter_pair
    out_a, out_b = run(unet_a, inputs, "c1"), run(unet_b, inputs, "c2")

    both = widened(base_unet, 2)
    load_control_lora(both, control_lora_state_dict(unet_a, "a"), "a", condition_index=0, num_conditions=2)
    load_control_lora(both, control_lora_state_dict(unet_b, "b"), "b", condition_index=1, num_conditions=2)
    lora_a = both.conv_in.lora_A["b"].weight
    assert lora_a.shape[1] == 12 and torch.equal(lora_a[:, 4:8], torch.zeros_like(lora_a[:, 4:8]))
    set_condition_scales(both, {"a": 1.0, "b": 0.0})
    torch.testing.assert_close(run(both, inputs, "c1", "c2"), out_a, rtol=0, atol=1e-5)
    set_condition_scales(both, {"a": 0.0, "b": 1.0})
    torch.testing.assert_close(run(both, inputs, "c1", "c2"), out_b, rtol=0, atol=1e-5)
    set_condition_scales(both, {"a": 0.0, "b": 0.0})
    torch.testing.assert_close(run(both, inputs, "c1", "c2"), run(base_unet, inputs), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="unknown adapter"):
        set_condition_scales(both, {"c": 1.0})


def test_switching_adapters_on_one_condition_slot(base_unet, inputs, adapter_pair):
    unet_a, unet_b = adapter_pair
    switch = widened(base_unet)
    load_control_lora(switch, control_lora_state_dict(unet_a, "a"), "a")
    load_control_lora(switch, control_lora_state_dict(unet_b, "b"), "b")
    assert switch.active_adapters() == ["b"]
    torch.testing.assert_close(run(switch, inputs, "c1"), run(unet_b, inputs, "c1"), rtol=0, atol=1e-6)
    switch.set_adapter("a")
    torch.testing.assert_close(run(switch, inputs, "c1"), run(unet_a, inputs, "c1"), rtol=0, atol=1e-6)
    set_condition_scales(switch, {"a": 0.0})  # scale 0: exactly the (widened) base UNet
    assert torch.equal(run(switch, inputs, "c1"), run(widened(base_unet), inputs, "c1"))


def test_load_errors_are_clear(base_unet, tmp_path):
    unet = widened(base_unet)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_control_lora(unet, tmp_path / "missing.safetensors", "a")
    with pytest.raises(ValueError, match="widen_conv_in"):
        load_control_lora(unet, {"unet.conv_in.lora_A.weight": torch.zeros(2, 8, 3, 3)}, "a", num_conditions=2)
    with pytest.raises(ValueError, match="lacks lora_A or lora_B"):
        load_control_lora(unet, {"unet.conv_in.lora_A.weight": torch.zeros(2, 8, 3, 3)}, "a")
    with pytest.raises(ValueError, match="condition_index"):
        load_control_lora(unet, {}, "a", condition_index=1)


class _NotATensor:
    pass


def test_pickled_lora_file_is_refused(base_unet, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"unet.conv_in.lora_A.weight": _NotATensor()}, path)
    with pytest.raises(UnsafeWeightsError, match="evil.pt"):
        load_control_lora(widened(base_unet), path, "a")
    with pytest.raises(UnsafeWeightsError, match="evil.pt"):
        lora_summary_from_file(path)


# ---------------------------------------------------------------------------------------------- encoding


def test_encode_condition_modes_and_fp16_upcast(tiny_dir):
    vae = AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae")
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    mode = encode_condition(vae, images, mode="mode")
    assert mode.shape == (2, 4, 32, 32)
    torch.testing.assert_close(mode, vae.encode(images).latent_dist.mode() * vae.config.scaling_factor)
    first = encode_condition(vae, images, "sample", torch.Generator().manual_seed(0))
    again = encode_condition(vae, images, "sample", torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and not torch.equal(first, mode)
    vae_fp16 = vae.to(torch.float16)
    half = encode_condition(vae_fp16, images.half(), mode="mode")
    assert half.dtype == torch.float16 and vae_fp16.dtype == torch.float16  # VAE restored after upcast
    torch.testing.assert_close(half.float(), mode, rtol=0, atol=2e-2)
    with pytest.raises(ValueError, match="mode"):
        encode_condition(vae, images, mode="mean")


# --------------------------------------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def trained_lora_file(base_unet, inputs, tmp_path_factory) -> Path:
    unet = widened(base_unet)
    add_control_lora(unet, "cond", "half_skip_attn", RANK, CONV_IN_RANK)
    with torch.no_grad():  # a strong adapter so that the condition visibly changes the image
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(7))
    return save_control_lora(tmp_path_factory.mktemp("lora"), unet, "cond")


def _condition_image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((64, 64)) > 0.5).astype(np.uint8) * 255)


def _pipelines(tiny_dir: Path, lora_file: Path, scheduler_class) -> tuple[ControlLoraPipeline, StableDiffusionPipeline]:
    """The Control-LoRA pipeline (loaded, widened, LoRA loaded) and the stock pipeline of the same base."""
    pipe = ControlLoraPipeline.from_pretrained(tiny_dir)
    widen_conv_in(pipe.unet, 1)
    load_control_lora(pipe.unet, lora_file, "cond")
    stock = StableDiffusionPipeline.from_pretrained(tiny_dir)
    for p in (pipe, stock):
        p.scheduler = scheduler_class.from_config(p.scheduler.config)
        p.set_progress_bar_config(disable=True)
    return pipe, stock


PIPE_ARGS = {"prompt": "a polyp", "num_inference_steps": 2, "guidance_scale": 3.0, "output_type": "np"}


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, UniPCMultistepScheduler])
def test_pipeline_generation_with_schedulers(tiny_dir, trained_lora_file, scheduler_class):
    pipe, stock = _pipelines(tiny_dir, trained_lora_file, scheduler_class)
    full = pipe(condition=_condition_image(0), generator=torch.Generator().manual_seed(0), **PIPE_ARGS).images
    never = pipe(condition=_condition_image(0), control_guidance_start=0.0, control_guidance_end=0.0,
                 generator=torch.Generator().manual_seed(0), **PIPE_ARGS).images
    base = stock(generator=torch.Generator().manual_seed(0), height=64, width=64, **PIPE_ARGS).images
    assert full.shape == (1, 64, 64, 3) and np.isfinite(full).all()
    np.testing.assert_allclose(never, base, rtol=0, atol=1e-5)  # window closed: exactly the stock model
    assert np.abs(full - base).max() > 1e-3


def test_pipeline_guidance_window_and_condition(tiny_dir, trained_lora_file):
    pipe, _ = _pipelines(tiny_dir, trained_lora_file, DDIMScheduler)

    def generate(condition_seed: int = 0, **kwargs) -> np.ndarray:
        return pipe(condition=_condition_image(condition_seed), generator=torch.Generator().manual_seed(0),
                    **PIPE_ARGS, **kwargs).images

    full = generate()
    zero = generate(condition_scale=0.0)
    never = generate(control_guidance_end=0.0)
    first_half = generate(control_guidance_end=0.5)  # adapter on for step 0 only
    np.testing.assert_array_equal(never, zero)
    assert np.abs(first_half - full).max() > 1e-5 and np.abs(first_half - zero).max() > 1e-5
    assert np.abs(generate(condition_seed=1) - full).max() > 1e-4  # the condition steers the image
    assert pipe.unet.conv_in.scaling["cond"] == 1.0  # scales restored after the call


def test_pipeline_batches_and_embeds_without_tokenizer(tiny_dir, trained_lora_file):
    pipe = ControlLoraPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    widen_conv_in(pipe.unet, 1)
    load_control_lora(pipe.unet, trained_lora_file, "cond")
    embeds = pipe.encode_prompt("a polyp", "cpu", 1, False)[0]
    bare = ControlLoraPipeline(
        vae=pipe.vae, text_encoder=None, tokenizer=None, unet=pipe.unet, scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    bare.set_progress_bar_config(disable=True)
    conditions = [_condition_image(0), np.asarray(_condition_image(1))]  # PIL and uint8 HxW array
    common = {"num_inference_steps": 2, "guidance_scale": 1.0, "output_type": "np"}
    batch = bare(prompt_embeds=embeds.repeat(2, 1, 1), condition=conditions,
                 generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **common).images
    assert batch.shape == (2, 64, 64, 3)
    single = pipe(prompt="a polyp", condition=conditions[1], generator=torch.Generator().manual_seed(1), **common)
    np.testing.assert_allclose(batch[1], single.images[0], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="condition"):
        bare(prompt_embeds=embeds.repeat(2, 1, 1), condition=[_condition_image(0)] * 3, **common)
    with pytest.raises(ValueError, match="condition"):
        bare(prompt_embeds=embeds, condition=None, **common)


def test_pipeline_two_conditions(tiny_dir, trained_lora_file):
    pipe = ControlLoraPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    widen_conv_in(pipe.unet, 2)
    load_control_lora(pipe.unet, trained_lora_file, "a", condition_index=0, num_conditions=2)
    load_control_lora(pipe.unet, trained_lora_file, "b", condition_index=1, num_conditions=2)
    args = {"prompt": "a polyp", "num_inference_steps": 2, "guidance_scale": 1.0, "output_type": "np"}
    cond_a, cond_b = _condition_image(0), _condition_image(1)
    only_a = pipe(condition=[cond_a, cond_b], condition_scale=[1.0, 0.0],
                  generator=torch.Generator().manual_seed(0), **args).images
    swapped = pipe(condition=[cond_b, cond_a], condition_scale=[0.0, 1.0],
                   generator=torch.Generator().manual_seed(0), **args).images
    np.testing.assert_allclose(only_a, swapped, rtol=0, atol=1e-5)  # same adapter weights, same condition
    with pytest.raises(ValueError, match="2 conditions"):
        pipe(condition=cond_a, **args)


def _tiny_sdxl_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
    )


def test_sdxl_pipeline_with_time_ids_and_pooled_embeds(tiny_dir):
    vae = AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae")
    scheduler = UniPCMultistepScheduler.from_pretrained(tiny_dir, subfolder="scheduler")
    base = _tiny_sdxl_unet().eval()
    unet = widen_conv_in(copy.deepcopy(base), 1)
    add_control_lora(unet, "cond", "half", RANK, CONV_IN_RANK)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    parts = {"vae": vae, "text_encoder": None, "text_encoder_2": None, "tokenizer": None, "tokenizer_2": None,
             "scheduler": scheduler, "add_watermarker": False}
    pipe = ControlLoraXLPipeline(unet=unet, **parts)
    stock = StableDiffusionXLPipeline(unet=base, **parts)
    for p in (pipe, stock):
        p.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    embeds = {
        "prompt_embeds": torch.randn(1, 77, 64, generator=g),
        "negative_prompt_embeds": torch.randn(1, 77, 64, generator=g),
        "pooled_prompt_embeds": torch.randn(1, 32, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(1, 32, generator=g),
    }
    args = {"num_inference_steps": 2, "guidance_scale": 2.0, "output_type": "np", **embeds}
    on = pipe(condition=_condition_image(0), generator=torch.Generator().manual_seed(0), **args).images
    off = pipe(condition=_condition_image(0), control_guidance_end=0.0,
               generator=torch.Generator().manual_seed(0), **args).images
    reference = stock(height=64, width=64, generator=torch.Generator().manual_seed(0), **args).images
    assert on.shape == (1, 64, 64, 3) and np.isfinite(on).all()
    np.testing.assert_allclose(off, reference, rtol=0, atol=1e-5)
    assert np.abs(on - reference).max() > 1e-3


# ------------------------------------------------------------------- file format: header, card, alphas, sources


def _strong_adapter(base_unet, name: str = "cond", seed: int = 7, n: int = 1) -> UNet2DConditionModel:
    unet = widened(base_unet, n)
    add_control_lora(unet, name, "half_skip_attn", RANK, CONV_IN_RANK)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for param_name, param in unet.named_parameters():
            if "lora_B" in param_name:
                param.normal_(0, 0.1, generator=generator)
    return unet


def test_saved_file_carries_header_metadata_and_model_card(base_unet, inputs, tmp_path):
    unet = _strong_adapter(base_unet)
    path = save_control_lora(tmp_path / "lora", unet, "cond", base_model="owner/base-sd", condition_type="canny",
                             prediction_type="epsilon", model_card=True)
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    config = json.loads(header[LORA_ADAPTER_METADATA_KEY])
    assert config["unet.r"] == config["unet.lora_alpha"] == RANK  # alphas = ranks: the file means W + B·A
    assert config["unet.rank_pattern"] == config["unet.alpha_pattern"] == {"^conv_in$": CONV_IN_RANK}
    assert set(config["unet.target_modules"]) == set(target_modules(unet, "half_skip_attn"))
    meta = read_control_lora_metadata(path.parent)
    assert meta == json.loads(header[METADATA_KEY])
    assert {k: meta[k] for k in ("base_model", "preset", "rank", "conv_in_rank", "stored_rank", "lora_init",
                                 "condition_type", "num_conditions", "condition_slots", "prediction_type")} == {
        "base_model": "owner/base-sd", "preset": "half_skip_attn", "rank": RANK, "conv_in_rank": CONV_IN_RANK,
        "stored_rank": RANK, "lora_init": "gaussian", "condition_type": "canny", "num_conditions": 1,
        "condition_slots": [0], "prediction_type": "epsilon"}
    card = (path.parent / MODEL_CARD_NAME).read_text()
    assert card.startswith("---\nlibrary_name: diffusers\nbase_model: owner/base-sd\n")
    assert "| preset | half_skip_attn |" in card and "load_control_lora" in card
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([LORA_WEIGHT_NAME, MODEL_CARD_NAME])


def test_stored_alphas_are_folded_into_the_weights(base_unet, inputs, tmp_path):
    unet = _strong_adapter(base_unet)
    reference = run(unet, inputs, "c1")
    state = control_lora_state_dict(unet, "cond")
    # the same adapter with alpha = rank/2 stored beside lora_B·2: W + (alpha/r)·B·A is unchanged
    with_alphas = {k: (v * 2 if ".lora_B." in k or ".lora.up." in k else v) for k, v in state.items()}
    for key, value in state.items():
        if key.endswith(("lora_A.weight", "lora.down.weight")):
            module = key.removesuffix(".lora_A.weight").removesuffix(".lora.down.weight")
            with_alphas[f"{module}.alpha"] = torch.tensor(value.shape[0] / 2)
    tensors = widened(base_unet)
    load_control_lora(tensors, with_alphas, "cond")
    torch.testing.assert_close(run(tensors, inputs, "c1"), reference, rtol=0, atol=1e-5)
    # alphas in diffusers' header metadata (lora_alpha, alpha_pattern) fold the same way
    doubled = {k: (v * 2 if ".lora_B." in k or ".lora.up." in k else v) for k, v in state.items()}
    header = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(
        {"unet.r": RANK, "unet.lora_alpha": RANK / 2, "unet.alpha_pattern": {"^conv_in$": CONV_IN_RANK / 2}})}
    save_file(doubled, str(tmp_path / "alphas.safetensors"), metadata=header)
    in_header = widened(base_unet)
    load_control_lora(in_header, tmp_path / "alphas.safetensors", "cond")
    torch.testing.assert_close(run(in_header, inputs, "c1"), reference, rtol=0, atol=1e-5)
    assert in_header.conv_in.scaling["cond"] == 1.0  # folded, not carried as a runtime scale


def test_hub_id_with_subfolder_and_weight_name_reads_an_offline_cache(base_unet, inputs, tmp_path):
    unet = _strong_adapter(base_unet)
    reference = run(unet, inputs, "c1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--hardgen--tiny-control-lora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_control_lora(repo / "snapshots" / commit / "canny", unet, "cond")
    (repo / "snapshots" / commit / "canny" / LORA_WEIGHT_NAME).rename(
        repo / "snapshots" / commit / "canny" / "canny.safetensors")
    fresh = widened(base_unet)
    load_control_lora(fresh, "hardgen/tiny-control-lora", "cond", subfolder="canny", weight_name="canny.safetensors",
                      cache_dir=tmp_path / "cache", local_files_only=True)
    torch.testing.assert_close(run(fresh, inputs, "c1"), reference, rtol=0, atol=1e-6)
    # a local folder takes subfolder/weight_name the same way
    local = widened(base_unet)
    load_control_lora(local, repo / "snapshots" / commit, "cond", subfolder="canny", weight_name="canny.safetensors")
    torch.testing.assert_close(run(local, inputs, "c1"), reference, rtol=0, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="hardgen/no-such-lora"):
        load_control_lora(widened(base_unet), "hardgen/no-such-lora", "cond", cache_dir=tmp_path / "cache",
                          local_files_only=True)


def test_several_files_map_to_slots_in_one_call(base_unet, inputs, adapter_pair):
    unet_a, unet_b = adapter_pair
    state_a, state_b = control_lora_state_dict(unet_a, "a"), control_lora_state_dict(unet_b, "b")
    one_by_one = widened(base_unet, 2)
    load_control_lora(one_by_one, state_a, "a", condition_index=0)
    load_control_lora(one_by_one, state_b, "b", condition_index=1)
    at_once = widened(base_unet, 2)
    load_control_lora(at_once, [state_b, state_a], ["b", "a"], condition_index=[1, 0])
    assert condition_slots(at_once) == {"b": (1,), "a": (0,)}
    assert active_condition_adapters(at_once) == ["a", "b"]  # slot order, not loading order
    # equal up to the order peft sums the two adapters in (loading order): measured 1.1e-6
    torch.testing.assert_close(run(at_once, inputs, "c1", "c2"), run(one_by_one, inputs, "c1", "c2"), rtol=0,
                               atol=1e-5)
    named = widened(base_unet, 2)
    load_control_lora(named, [state_a, state_b], "cond")
    assert condition_slots(named) == {"cond_0": (0,), "cond_1": (1,)}
    with pytest.raises(ValueError, match="one of each"):
        load_control_lora(widened(base_unet, 2), [state_a, state_b], ["a"])


def test_condition_scales_leave_a_style_lora_alone(base_unet, inputs, adapter_pair):
    unet_a, unet_b = adapter_pair
    unet = widened(base_unet, 2)
    load_control_lora(unet, control_lora_state_dict(unet_b, "b"), "b", condition_index=1)  # reverse slot order
    load_control_lora(unet, control_lora_state_dict(unet_a, "a"), "a", condition_index=0)
    style = LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q", "to_v", "proj_in"])
    unet.add_adapter(style, adapter_name="style")
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B.style" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(11))
    unet.set_adapters(["a", "b", "style"], [1.0, 1.0, 0.5])
    assert condition_slots(unet) == {"b": (1,), "a": (0,)} and "style" not in condition_slots(unet)
    set_condition_scales(unet, {"a": 0.0, "b": 0.0})
    style_only = run(unet, inputs, "c1", "c2")
    assert (style_only - run(widened(base_unet, 2), inputs, "c1", "c2")).abs().max() > 1e-3  # the style acts
    assert "style" in unet.active_adapters() and unet.down_blocks[1].attentions[0].proj_in.scaling["style"] == 0.5
    set_condition_scales(unet, {"a": 1.0})  # b off, style untouched
    assert set(unet.active_adapters()) == {"a", "style"}
    assert unet.down_blocks[1].attentions[0].proj_in.scaling["style"] == 0.5


# ------------------------------------------------------------------------------------------ PiSSA, summary


def test_pissa_conv_falls_back_only_when_the_rank_exceeds_the_output_channels(base_unet, inputs):
    original = widened(base_unet)
    unet = copy.deepcopy(original)
    add_control_lora(unet, "p", "half", 48, 16, "pissa")
    factors = pissa_initial_factors(unet, "p")
    layers = dict(unet.named_modules())
    # rank 48 > 32 output channels: gaussian init kept (B = 0), as control-lora-v3
    assert "down_blocks.0.resnets.0.conv1" not in factors
    assert layers["down_blocks.0.resnets.0.conv1"].lora_B["p"].weight.abs().sum() == 0
    # 3x3 conv 32 → 64 (288 inputs): full PiSSA; conv_in at rank 16 <= 32 outputs too
    assert "down_blocks.1.resnets.0.conv1" in factors and "conv_in" in factors
    # 1x1 shortcut 32 → 64: 32 principal components fill ranks 0..31, ranks 32..47 train from B = 0
    shortcut = layers["down_blocks.1.resnets.0.conv_shortcut"]
    b = shortcut.lora_B["p"].weight.reshape(64, 48)
    assert "down_blocks.1.resnets.0.conv_shortcut" in factors
    assert b[:, :32].abs().min(dim=0).values.max() > 0 and b[:, 32:].abs().sum() == 0
    originals = dict(original.named_modules())
    for name in ("conv_in", "down_blocks.1.resnets.0.conv1", "down_blocks.1.resnets.0.conv_shortcut"):
        torch.testing.assert_close(_effective_weight(layers[name], "p"), originals[name].weight, rtol=0, atol=1e-5)
    torch.testing.assert_close(run(unet, inputs, "c1"), run(original, inputs, "c1"), rtol=0, atol=1e-5)


def test_summary_of_a_pissa_file_reports_stored_and_live_counts(base_unet, tmp_path, capsys):
    from hardgen.app.cli import main

    unet = widened(base_unet)
    add_control_lora(unet, "p", "half_skip_attn", RANK, CONV_IN_RANK, "pissa_niter_2")
    path = save_control_lora(tmp_path / "pissa", unet, "p", lora_init="pissa_niter_2")
    stored = sum(v.numel() for v in load_file(str(path)).values())
    live = lora_summary(TINY_UNET, "half_skip_attn", RANK, CONV_IN_RANK)["trainable_params"]
    assert stored == 2 * live
    assert main(["lora-summary", "--load", str(path), "--unet-config", str(TINY_UNET)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["modules"] == len(target_modules(base_unet, "half_skip_attn"))
    assert summary["trainable_params"] == summary["stored_params"] == stored
    assert summary["live_params"] == live and summary["lora_init"] == "pissa_niter_2"
    plain = save_control_lora(tmp_path / "plain", _strong_adapter(base_unet), "cond")
    assert lora_summary_from_file(plain)["live_params"] == lora_summary_from_file(plain)["stored_params"]


def test_encode_condition_runs_outside_autocast(tiny_dir):
    vae = AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae")
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    reference = encode_condition(vae, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = encode_condition(vae, images)
        assert (vae.encode(images).latent_dist.mode() * vae.config.scaling_factor - reference).abs().max() > 1e-4
    assert inside.dtype == torch.float32 and torch.equal(inside, reference)
