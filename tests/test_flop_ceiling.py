"""benchmarks/flop_ceiling.py: meta-tensor FLOP counts equal real ones, and the ceilings follow from them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "resources" / "tiny-sd-polyp"
#: the tiny base's latent side at 64 px (its VAE halves the image once per level after the first)
SIDE = 64 // 2 ** (len(json.loads((TINY / "vae" / "config.json").read_text())["block_out_channels"]) - 1)


def _module():
    spec = importlib.util.spec_from_file_location("flop_ceiling", REPO / "benchmarks" / "flop_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_counts():
    return _module().count_flops(TINY, 64)


def test_meta_counts_equal_counts_on_real_weights(tiny_counts):
    """The meta-device count is the count torch makes on real tensors (the tiny base's UNet and its ControlNet)."""
    unet = UNet2DConditionModel.from_pretrained(TINY, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    x, t = torch.randn(1, 4, SIDE, SIDE), torch.full((1,), 500)
    text, image = torch.randn(1, 77, unet.config.cross_attention_dim), torch.rand(1, 3, 64, 64)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            unet(x, t, encoder_hidden_states=text)
        real_unet = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            controlnet(x, t, encoder_hidden_states=text, controlnet_cond=image)
        real_controlnet = counter.get_total_flops()
    assert real_unet > 1e8
    assert tiny_counts["unet"] == real_unet
    assert tiny_counts["controlnet"] == real_controlnet


def test_control_lora_step_costs_only_the_wider_conv_in(tiny_counts):
    unet = json.loads((TINY / "unet" / "config.json").read_text())
    c_in, c_out, side = unet["in_channels"], unet["block_out_channels"][0], SIDE
    extra_conv_in = 2 * c_in * c_out * 3 * 3 * side * side  # the condition latent's channels, multiply-adds × 2
    assert tiny_counts["control_lora_unet"] - tiny_counts["unet"] == extra_conv_in
    assert tiny_counts["unet_with_residuals"] == tiny_counts["unet"]  # the residual additions are not FLOP-counted


def test_ceilings(tiny_counts):
    module = _module()
    limits = module.ceilings(tiny_counts, steps=20)
    expected_step = (tiny_counts["unet"] + tiny_counts["controlnet"]) / tiny_counts["control_lora_unet"]
    assert limits["step_ratio"] == pytest.approx(expected_step)
    assert 1.0 < limits["step_ratio"] < 1.0 + limits["controlnet_share_of_unet"] + 1e-3
    # the condition encode is paid once per call by the Control-LoRA only: the whole call's ceiling is lower, and
    # it rises towards the per-step one as the steps grow
    assert limits["call_ratio"] < limits["step_ratio"]
    assert limits["call_ratio"] < module.ceilings(tiny_counts, steps=200)["call_ratio"] < limits["step_ratio"]


def test_missing_config_is_named(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text((TINY / "unet" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"vae.*config\.json"):
        _module().count_flops(tmp_path, 64)


def test_training_step_counts_the_backward_and_control_lora_is_cheaper(tiny_counts):
    train = _module().count_training_flops(TINY, 64)
    # the LoRA reaches conv_in, so its gradients flow back through the whole UNet: more than twice the forward
    assert train["control_lora"] > 2 * tiny_counts["control_lora_unet"]
    # ControlNet: its own forward and backward on top of the frozen UNet's forward and its decoder's backward
    assert train["controlnet"] > tiny_counts["unet"] + 2 * tiny_counts["controlnet"]
    assert train["control_lora"] < train["controlnet"]
