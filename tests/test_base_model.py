"""Tiny SD build (deterministic, atomic, offline) and the shared component loader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from hardgen.models.base_model import (
    build_tiny_sd,
    load_components,
    load_tokenizer,
    resolve_base,
)

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
TINY_CONFIG = RESOURCES / "tiny-sd"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "tiny-sd"
    build_tiny_sd(TINY_CONFIG, out, seed=0)
    return out


def _weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    files = list((folder / part).glob("*.safetensors"))
    assert len(files) == 1, f"{part}: expected one safetensors file, got {files}"
    return load_file(str(files[0]))


def test_build_is_a_complete_safetensors_pipeline_folder(tiny_dir):
    assert (tiny_dir / "model_index.json").is_file()
    for part in ("unet", "vae", "text_encoder"):
        assert _weights(tiny_dir, part)
    assert not list(tiny_dir.rglob("*.bin")) and not list(tiny_dir.rglob("*.pt"))
    assert [p.name for p in tiny_dir.parent.iterdir()] == ["tiny-sd"]  # no temp folder left behind


def test_build_is_deterministic_per_seed(tiny_dir, tmp_path):
    again = tmp_path / "again"
    build_tiny_sd(TINY_CONFIG, again, seed=0)
    other = tmp_path / "other"
    build_tiny_sd(TINY_CONFIG, other, seed=1)
    for part in ("unet", "vae", "text_encoder"):
        first, second, third = _weights(tiny_dir, part), _weights(again, part), _weights(other, part)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
        assert any(not torch.equal(first[k], third[k]) for k in first)


def test_rebuild_replaces_an_existing_folder(tmp_path):
    out = tmp_path / "model"
    build_tiny_sd(TINY_CONFIG, out, seed=0)
    (out / "stale.txt").write_text("old")
    build_tiny_sd(TINY_CONFIG, out, seed=0)
    assert not (out / "stale.txt").exists() and (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_build_names_a_missing_config_file(tmp_path):
    broken = tmp_path / "cfg"
    shutil.copytree(TINY_CONFIG, broken)
    (broken / "vae" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="vae/config.json"):
        build_tiny_sd(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenizer_is_the_byte_level_clip_vocab():
    tokenizer = load_tokenizer(TINY_CONFIG / "tokenizer")
    assert len(tokenizer) == 514 and tokenizer.model_max_length == 77
    ids = tokenizer("an endoscopic image, 5 mm!", padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id
    assert max(ids) < 514 and tokenizer.unk_token_id not in ids[1 : ids.index(tokenizer.eos_token_id)]
    # CLIP splits punctuation into words of its own, so compare without spaces
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == "an endoscopic image, 5 mm!".replace(" ", "")


def test_load_components_gives_frozen_parts_that_fit_together(tiny_dir):
    parts = load_components(tiny_dir)
    assert set(parts) == {"vae", "unet", "text_encoder", "tokenizer", "noise_scheduler"}
    assert isinstance(parts["unet"], UNet2DConditionModel) and isinstance(parts["text_encoder"], CLIPTextModel)
    assert not any(p.requires_grad for p in parts["unet"].parameters())
    ids = parts["tokenizer"]("a polyp", padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = parts["text_encoder"](ids)[0]
    assert hidden.shape == (1, 77, parts["unet"].config.cross_attention_dim)
    assert parts["noise_scheduler"].config.beta_schedule == "scaled_linear"
    half = load_components(tiny_dir, dtype=torch.float16)
    assert half["unet"].dtype == torch.float16 and half["text_encoder"].dtype == torch.float16


def test_tiny_folder_loads_as_a_stock_pipeline_and_generates(tiny_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a polyp", num_inference_steps=1, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_vae_override(tiny_dir, tmp_path):
    other = AutoencoderKL.from_pretrained(tiny_dir, subfolder="vae")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.save_pretrained(tmp_path / "vae")
    parts = load_components(tiny_dir, vae=tmp_path / "vae")
    assert torch.equal(parts["vae"].encoder.conv_in.weight, other.encoder.conv_in.weight)


def test_sdxl_family_loads_the_second_text_encoder(tiny_dir, tmp_path):
    parts = load_components(tiny_dir)
    torch.manual_seed(0)
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(tiny_dir / "text_encoder"))
    StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=text_2,
        tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer"], unet=parts["unet"],
        scheduler=parts["noise_scheduler"], add_watermarker=False,
    ).save_pretrained(tmp_path / "xl")
    xl = load_components(tmp_path / "xl", family="sdxl")
    assert isinstance(xl["text_encoder_2"], CLIPTextModelWithProjection) and len(xl["tokenizer_2"]) == 514


def test_bad_base_and_family_name_their_config_keys(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="model.family"):
        load_components(tiny_dir, family="sd3")
    with pytest.raises(FileNotFoundError, match="model.base"):
        load_components(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="model.base"):
        load_components("results/base_model/missing")


def test_resolve_base():
    assert resolve_base("tiny", "results/base_model") == "results/base_model"
    assert resolve_base("runwayml/stable-diffusion-v1-5", "x") == "runwayml/stable-diffusion-v1-5"
    with pytest.raises(ValueError, match="model.base"):
        resolve_base("", "x")
