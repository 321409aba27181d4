"""The demo's condition adapter (``resources/tiny-sd-polyp-mask``) makes the shipped base follow its masks, and
``hardgen.pretrain.adapter`` is seeded, checked, resumable and writes a file the plain training starts from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hardgen.app.cli import main
from hardgen.pretrain.adapter import (
    PRETRAINING,
    AdapterSettings,
    draw_timesteps,
    latent_masks,
    mask_weighted_mse,
    pretrain_adapter,
    timestep_weights,
)
from hardgen.pretrain.tiny_sd import CheckpointOptions

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "resources" / "tiny-sd-polyp"
ADAPTER = REPO / "resources" / "tiny-sd-polyp-mask"
#: Tiny settings for runs of the code itself (seconds, one thread): 32 px, 3 steps of 2, 4 held-out masks.
SMOKE = {"images": 6, "heldout": 4, "resolution": 32, "steps": 3, "batch": 2, "warmup_steps": 1, "sample_steps": 2,
         "threads": 1}


# ------------------------------------------------------------------------------------------------ the pieces
def test_cubic_timesteps_favour_high_noise_and_uniform_does_not():
    generator = torch.Generator().manual_seed(0)
    cubic = draw_timesteps("cubic", 20_000, 1000, generator).float()
    uniform = draw_timesteps("uniform", 20_000, 1000, generator).float()
    assert cubic.min() >= 0 and cubic.max() <= 999 and uniform.min() >= 0 and uniform.max() <= 999
    # P(t > 0.79 T) = P(u^3 < 0.21) = 0.21^(1/3) = 0.59 for cubic, 0.21 for uniform
    assert (cubic > 790).float().mean() == pytest.approx(0.59, abs=0.02)
    assert (uniform > 790).float().mean() == pytest.approx(0.21, abs=0.02)
    with pytest.raises(ValueError, match="timesteps"):
        draw_timesteps("linear", 4, 1000, generator)


def test_the_mask_weight_counts_errors_inside_the_polyp_more():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 1.0  # 4 of 64 pixels
    target = torch.zeros(1, 4, 8, 8)
    inside, outside = target.clone(), target.clone()
    inside[..., 2:4, 2:4] = 1.0
    outside[..., 5:7, 5:7] = 1.0  # the same error, off the polyp
    plain = F.mse_loss(inside, target)
    assert mask_weighted_mse(inside, target, mask, 0.0) == pytest.approx(float(plain))
    assert mask_weighted_mse(outside, target, mask, 0.0) == pytest.approx(float(plain))
    assert mask_weighted_mse(inside, target, mask, 4.0) > 3 * plain > mask_weighted_mse(outside, target, mask, 4.0) * 3
    # renormalised: a uniform error keeps its value whatever the weight
    assert mask_weighted_mse(target + 1, target, mask, 4.0) == pytest.approx(1.0)


def test_v_weighting_counts_high_noise_more_up_to_its_cap():
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    steps = torch.tensor([10, 300, 600, 900, 999])
    v = timestep_weights("v", steps, alphas, cap=20.0)
    assert float(v.mean()) == pytest.approx(1.0)
    assert (v[1:] >= v[:-1]).all() and v[-1] > 5 * v[0]  # the noisier, the more its (layout) error counts
    assert float(v.max() / v.min()) <= 20.0 + 1e-4  # 1 + 1/SNR is ~1 at t = 10 and ~200 at t = 999: capped
    assert timestep_weights("epsilon", steps, alphas, cap=20.0) is None  # mask_weighted_mse's unweighted path
    with pytest.raises(ValueError, match="loss_weighting"):
        timestep_weights("x0", steps, alphas, cap=20.0)
    # per-sample weights reach the loss: up-weighting the image with the larger error raises it; ones change nothing
    target, masks = torch.zeros(2, 4, 4, 4), torch.zeros(2, 1, 4, 4)
    pred = target.clone()
    pred[1] = 1.0
    plain = mask_weighted_mse(pred, target, masks, 0.0)
    assert mask_weighted_mse(pred, target, masks, 0.0, torch.ones(2)) == pytest.approx(float(plain))
    assert mask_weighted_mse(pred, target, masks, 0.0, torch.tensor([0.5, 1.5])) == pytest.approx(1.5 * float(plain))


def test_latent_masks_average_the_mask_onto_the_latent_grid():
    masks = np.zeros((1, 8, 8), bool)
    masks[0, :4, :4] = True
    grid = latent_masks(masks, 4)
    assert grid.shape == (1, 1, 4, 4)
    assert grid[0, 0, :2, :2].eq(1).all() and grid[0, 0, 2:, 2:].eq(0).all() and float(grid.mean()) == 0.25


def test_bad_settings_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError) as err:
        AdapterSettings(steps=0, timesteps="linear", condition="depth", heldout=1, mask_weight=-1, loss_weighting="x0",
                        weighting_cap=0.5, init_weights=str(tmp_path / "missing.safetensors")).check()
    for name in ("steps", "timesteps", "condition", "heldout", "mask_weight", "loss_weighting", "weighting_cap",
                 "missing.safetensors"):
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pretrain_adapter(tmp_path / "nowhere", tmp_path / "out", AdapterSettings(**SMOKE))
    assert not (tmp_path / "out").exists()


def test_settings_follow_the_workflow_config():
    from hardgen.config.validation import load_config

    config = load_config([REPO / "config" / "config.yaml"])
    settings = PRETRAINING.settings_from_config(config)
    assert (settings.condition, settings.preset, settings.rank, settings.conv_in_rank) == (
        config["condition"]["type"], config["lora"]["preset"], config["lora"]["rank"], config["lora"]["conv_in_rank"])
    assert settings.resolution == config["model"]["resolution"] and settings.prompt == config["model"]["prompt"]
    with pytest.raises(ValueError, match="unknown"):
        PRETRAINING.settings_from_config(config, {"unet_steps": 3})


# ------------------------------------------------------------------------------------------------ the run
def test_an_interrupted_run_resumes_to_the_same_adapter(tmp_path, capsys):
    settings = AdapterSettings(**SMOKE)
    whole = pretrain_adapter(BASE, tmp_path / "whole", settings)
    checkpoint = tmp_path / "ckpt"
    stopped = pretrain_adapter(BASE, tmp_path / "resumed", settings,
                               checkpointing=CheckpointOptions(checkpoint_dir=checkpoint, stop_after_steps=2))
    assert stopped["complete"] is False and stopped["step"] == 2 and not (tmp_path / "resumed").exists()
    state = torch.load(checkpoint / "checkpoint.pt", weights_only=True)
    assert state["stage"] == "adapter" and len(state["log"]) == 2
    assert all("lora" in key or "conv_in" in key for key in state["model"])  # the trainable part only
    resumed = pretrain_adapter(BASE, tmp_path / "resumed", settings,
                               checkpointing=CheckpointOptions(checkpoint_dir=checkpoint))
    a = load_file(tmp_path / "whole" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "resumed" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # equal measures (NaN-aware: 4 held-out masks are too few to validate the real gap, so the margin is undefined)
    assert resumed["loss"] == whole["loss"]
    assert pd.Series(resumed["mask_following"]).equals(pd.Series(whole["mask_following"]))
    assert resumed["resumed"] and not whole["resumed"] and not checkpoint.exists()
    card = (tmp_path / "resumed" / "README.md").read_text()
    assert "3 optimiser steps" in card and "summed over resumed sessions" in card and "| base + adapter |" in card

    # the file is a Control-LoRA the plain training continues from (lora.init_weights)
    from hardgen.models.control_lora import read_control_lora_metadata

    meta = read_control_lora_metadata(tmp_path / "whole")
    assert (meta["condition_type"], meta["preset"], meta["rank"], meta["conv_in_rank"]) == ("mask", "half_skip_attn",
                                                                                          16, 64)
    assert meta["prediction_type"] == "epsilon" and meta["base_model"] == BASE.as_posix()

    # the CLI: a stopped session says so and writes nothing
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMOKE.items() if k not in ("resolution", "sample_steps")]
    assert main(["pretrain-adapter", "--base", str(BASE), "--out", str(tmp_path / "cli"), *flags,
                 "--checkpoint-dir", str(tmp_path / "cli-ckpt"), "--stop-after-steps", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["complete"] is False and printed["step"] == 1 and not (tmp_path / "cli").exists()


def test_a_second_stage_continues_the_given_adapter(tmp_path):
    """``init_weights`` starts from a saved adapter (make tiny-sd's second stage): at a vanishing lr the result is that
    adapter, while a fresh start's lora_B is zero (peft); and the init file is part of the checkpoint fingerprint."""
    first = AdapterSettings(**SMOKE)
    pretrain_adapter(BASE, tmp_path / "first", first)
    init = tmp_path / "first" / "pytorch_lora_weights.safetensors"
    still = AdapterSettings(**{**SMOKE, "lr": 1e-12, "init_weights": str(init), "loss_weighting": "v"})
    summary = pretrain_adapter(BASE, tmp_path / "second", still)
    a, b = load_file(init), load_file(tmp_path / "second" / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # so the match is not two zero adapters
    assert summary["settings"]["init_weights"] == str(init)
    assert "Continued from" in (tmp_path / "second" / "README.md").read_text()
    fresh = pretrain_adapter(BASE, tmp_path / "fresh", AdapterSettings(**{**SMOKE, "lr": 1e-12}))
    c = load_file(tmp_path / "fresh" / "pytorch_lora_weights.safetensors")
    assert all(c[k].abs().max() < 1e-6 for k in c if "lora_B" in k) and fresh["complete"]


# ---------------------------------------------------------------------------------------------- the shipped adapter
def test_shipped_adapter_is_small_and_made_for_the_shipped_base():
    """Size, provenance and shape (the next test measures it). Provenance: its card's command is the second stage
    that ``make tiny-sd`` runs, continued from the first stage's file."""
    from hardgen.config.validation import load_config
    from hardgen.models.control_lora import read_control_lora_metadata

    shipped = [p for folder in (BASE, ADAPTER) for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) <= 10 * 1024 * 1024  # everything the demo ships
    card = (ADAPTER / "README.md").read_text()
    assert "hardgen pretrain-adapter" in card and "| base + adapter |" in card
    command = card.split("Made by `", 1)[1].split("`", 1)[0].split()
    flags = dict(zip(command[2::2], command[3::2], strict=True))  # "hardgen pretrain-adapter --flag value ..."
    recipe = (REPO / "Makefile").read_text().split("\ntiny-sd:", 1)[1].split("\n\n", 1)[0]
    stage1 = recipe.split("--init-weights", 1)[1].split()[0].strip('"').replace("$(ADAPTER_STAGE1)", "")
    assert flags["--init-weights"].endswith(stage1) and "Continued from" in card
    for flag in ("--steps", "--lr", "--loss-weighting"):
        assert f"{flag} {flags[flag]}" in recipe, flag
    meta = read_control_lora_metadata(ADAPTER)
    config = load_config([REPO / "config" / "config.yaml"])
    assert meta["base_model"] == config["model"]["base"] == "resources/tiny-sd-polyp"
    assert (meta["condition_type"], meta["preset"], meta["rank"], meta["conv_in_rank"]) == (
        config["condition"]["type"], config["lora"]["preset"], config["lora"]["rank"], config["lora"]["conv_in_rank"])
    assert Path(config["lora"]["init_weights"]).parent == ADAPTER.relative_to(REPO)


def test_shipped_base_and_adapter_follow_held_out_masks():
    """The issue's target on held-out masks, on the first 48 of the model card's 144 (one sampling batch, the same
    masks and seeds; ~18 CPU-s on the suite's one torch thread): the base with the adapter puts the polyp's tint on
    its own mask at >= 0.5 of the real images' own-vs-shuffled margin (measured: 1.06; the card's 144: 0.91), and
    shows the dark endoscope corners >= 0.8 x as often as the real images (67 % vs 58 %). The card's own numbers are
    reproduced by the slow test below."""
    import dataclasses

    from hardgen.pretrain.adapter import measure_mask_following

    measure = measure_mask_following(BASE, ADAPTER, dataclasses.replace(AdapterSettings(), heldout=48))
    assert measure["margin_vs_real"] >= 0.5
    assert measure["dark_corners"] >= 0.8 * measure["real_dark_corners"]


@pytest.mark.slow
def test_the_adapter_card_measure_is_reproduced():
    """The model card's measure, live on its 144 held-out masks (seeded: the same numbers; card: 0.91 and 60 % vs
    62.5 %, 0.16 and 40 % through the base's decoder before it was fine-tuned). ~40 s on one torch thread (the card's
    2 threads give the same numbers)."""
    from hardgen.pretrain.adapter import measure_mask_following

    measure = measure_mask_following(BASE, ADAPTER, AdapterSettings())
    assert measure["margin_vs_real"] >= 0.5
    assert measure["dark_corners"] >= 0.8 * measure["real_dark_corners"]
    row = next(line for line in (ADAPTER / "README.md").read_text().splitlines() if line.startswith("| base + adapter"))
    # the card's number, reproduced (seeded; the tolerance is for another machine's float rounding over 10 steps)
    assert float(row.split("|")[4]) == pytest.approx(measure["margin_vs_real"], abs=0.05)
