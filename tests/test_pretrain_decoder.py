"""``hardgen.pretrain.decoder``: the decoder-only fine-tuning of the demo base's VAE moves the decoder and nothing
else (encoder, latents, UNet, every other file), lowers the reconstruction error it trains on, is seeded, checked and
resumable, and the shipped base carries its section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from hardgen.app.cli import main
from hardgen.pretrain.decoder import (
    CARD_SECTION,
    PRETRAINING,
    DecoderSettings,
    card_with_section,
    decoder_parameters,
    pretrain_decoder,
    train_decoder,
)
from hardgen.pretrain.tiny_sd import CheckpointOptions

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "resources" / "tiny-sd-polyp"
#: Tiny settings for runs of the code itself (seconds, one thread): 3 steps of 2, 4 held-out images.
SMOKE = {"images": 6, "heldout": 4, "steps": 3, "batch": 2, "threads": 1}


def _vae(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")


def test_bad_settings_and_paths_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError) as err:
        DecoderSettings(steps=0, batch=0, heldout=1, lr=0, resolution=30, min_size=200).check()
    for name in ("steps", "batch", "heldout", "lr", "resolution", "min_size"):
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pretrain_decoder(tmp_path / "nowhere", tmp_path / "out", DecoderSettings(**SMOKE))
    with pytest.raises(ValueError, match="base itself"):
        pretrain_decoder(BASE, BASE, DecoderSettings(**SMOKE))
    # one inside the other: the output replaces its folder whole (it would delete the base, or copy itself)
    import shutil

    nested = tmp_path / "outer" / "base"
    shutil.copytree(BASE, nested)
    for base, out in ((nested, tmp_path / "outer"), (nested, nested / "out")):
        with pytest.raises(ValueError, match="inside one another"):
            pretrain_decoder(base, out, DecoderSettings(**SMOKE))
    assert (nested / "unet").is_dir() and not (nested / "out").exists()
    assert not (tmp_path / "out").exists()


def test_settings_follow_the_workflow_config():
    from hardgen.config.validation import load_config

    config = load_config([REPO / "config" / "config.yaml"])
    settings = PRETRAINING.settings_from_config(config)
    assert settings.resolution == config["model"]["resolution"]
    assert (settings.min_size, settings.max_size) == (config["data"]["demo"]["min_size"],
                                                       config["data"]["demo"]["max_size"])
    with pytest.raises(ValueError, match="unknown"):
        PRETRAINING.settings_from_config(config, {"unet_steps": 3})


def test_training_lowers_the_l1_and_moves_the_decoder_only():
    """A direction, not "weights changed": 30 steps on 8 pool images lower the L1 of decode(posterior mean) on those
    images; the encoder's posterior is bit-identical afterwards, so every latent the UNet and the adapters were
    trained on means what it meant."""
    from diffusers import AutoencoderKL

    from hardgen.data.demo import PRETRAIN_STREAM
    from hardgen.pretrain.tiny_sd import latent_moments, render_pool, to_model_range

    settings = DecoderSettings(images=8, steps=30, batch=8, lr=5e-4, threads=1)
    vae = AutoencoderKL.from_pretrained(BASE / "vae").eval()
    images, _ = render_pool(settings, settings.images, PRETRAIN_STREAM)
    pixels = to_model_range(images)
    with torch.no_grad():
        moments = latent_moments(vae, pixels)
    before = {k: v.clone() for k, v in vae.state_dict().items()}

    def l1() -> float:
        with torch.no_grad():
            return float((vae.decode(moments.chunk(2, dim=1)[0]).sample - pixels).abs().mean())

    start = l1()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log = train_decoder(vae, pixels, moments, settings)
    finally:
        torch.set_num_threads(previous)
    # measured (seeded): 0.0308 -> 0.0284 on the shipped decoder, 0.0521 -> 0.0502 on the base's first one
    assert len(log) == 30 and l1() < 0.95 * start
    trained = {id(p) for p in decoder_parameters(vae)}
    names = {n for n, p in vae.named_parameters() if id(p) in trained}
    assert names and all(n.startswith(("decoder.", "post_quant_conv.")) for n in names)
    after = vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(("decoder.", "post_quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with torch.no_grad():
        assert torch.equal(latent_moments(vae, pixels), moments)
    assert not any(p.requires_grad for p in vae.parameters())


def test_an_interrupted_run_resumes_to_the_same_folder(tmp_path, capsys):
    settings = DecoderSettings(**SMOKE)
    whole = pretrain_decoder(BASE, tmp_path / "whole", settings, command="hardgen pretrain-decoder --out x")
    checkpoint = tmp_path / "ckpt"
    stopped = pretrain_decoder(BASE, tmp_path / "resumed", settings,
                               checkpointing=CheckpointOptions(checkpoint_dir=checkpoint, stop_after_steps=2))
    assert stopped["complete"] is False and stopped["step"] == 2 and not (tmp_path / "resumed").exists()
    state = torch.load(checkpoint / "checkpoint.pt", weights_only=True)
    assert state["stage"] == "decoder" and len(state["log"]) == 2
    assert all(key.startswith(("decoder.", "post_quant_conv.")) for key in state["model"])  # the trainable part only
    resumed = pretrain_decoder(BASE, tmp_path / "resumed", settings,
                               checkpointing=CheckpointOptions(checkpoint_dir=checkpoint))
    a, b = _vae(tmp_path / "whole"), _vae(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # equal measures (NaN-aware: a handful of held-out images is too few to validate the real gap)
    assert resumed["l1"] == whole["l1"] and not checkpoint.exists()
    assert pd.Series(resumed["after"]).equals(pd.Series(whole["after"]))
    assert resumed["resumed"] and not whole["resumed"]

    # every other file of the base is copied unchanged; the VAE's encoder too
    base = _vae(BASE)
    assert all(torch.equal(a[k], base[k]) for k in base if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(a[k], base[k]) for k in base if k.startswith("decoder."))
    others = sorted(p.relative_to(BASE) for p in BASE.rglob("*") if p.is_file()
                    and p.relative_to(BASE).parts[0] not in ("vae", "README.md"))
    assert others and all((tmp_path / "whole" / p).read_bytes() == (BASE / p).read_bytes() for p in others)
    # the VAE's settings (scaling factor included) are the base's, byte for byte
    assert (tmp_path / "whole" / "vae" / "config.json").read_bytes() == (BASE / "vae" / "config.json").read_bytes()

    # the card: the base's, whole, with this stage's section appended (the shipped base has one already: each
    # fine-tuning keeps the record of its own step)
    base_card = (BASE / "README.md").read_text()
    card = (tmp_path / "whole" / "README.md").read_text()
    assert card.startswith(base_card.rstrip("\n")) and card.count(CARD_SECTION) == base_card.count(CARD_SECTION) + 1
    section = card.rsplit(CARD_SECTION, 1)[1]
    assert "3 optimiser steps" in section and "| fine-tuned |" in section
    assert "`hardgen pretrain-decoder --out x`" in section
    assert card_with_section("", whole).startswith(CARD_SECTION)

    # the CLI: a stopped session says so and writes nothing
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMOKE.items()]
    assert main(["pretrain-decoder", "--base", str(BASE), "--out", str(tmp_path / "cli"), *flags,
                 "--config", str(REPO / "config" / "config.yaml"),
                 "--checkpoint-dir", str(tmp_path / "cli-ckpt"), "--stop-after-steps", "1"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["complete"] is False and printed["step"] == 1 and not (tmp_path / "cli").exists()


def test_the_shipped_base_carries_the_decoder_stage_that_make_tiny_sd_runs():
    """Provenance: the shipped base's card has the decoder section, its command is the Makefile's step, and its
    held-out measure says the fine-tuned decoder keeps more of the polyp's tint than the base's (the reason for it)."""
    card = (BASE / "README.md").read_text()
    assert card.count(CARD_SECTION) == 1
    section = card.split(CARD_SECTION, 1)[1]
    command = section.split("Then `", 1)[1].split("`", 1)[0]
    recipe = (REPO / "Makefile").read_text().split("\ntiny-sd:", 1)[1].split("\n\n", 1)[0]
    assert "hardgen pretrain-decoder" in command and "--out resources/tiny-sd-polyp" in command
    assert "pretrain-decoder" in recipe and "--out resources/tiny-sd-polyp" in recipe
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in section.splitlines() if line.startswith(("| the base's", "| fine-tuned"))}
    margin = {name: float(cells[1]) for name, cells in rows.items()}
    psnr = {name: float(cells[0].split()[0]) for name, cells in rows.items()}
    assert margin["fine-tuned"] > margin["the base's"] and psnr["fine-tuned"] > psnr["the base's"]
    assert np.isfinite(list(margin.values())).all()
