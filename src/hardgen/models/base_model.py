"""The base Stable Diffusion model: build the tiny offline demo model, and load any base the same way.

The demo's base is ``model.base: tiny``: the tiny SD of ``resources/tiny-sd``'s configs with random weights
(:func:`build_tiny_sd`), saved as a normal diffusers ``StableDiffusionPipeline`` folder. :mod:`hardgen.pretrain.tiny_sd`
(``make tiny-sd``) pre-trains those shapes on the procedural polyp images (``resources/tiny-sd-polyp``, work in
progress, not shipped). Real runs point ``model.base`` at SD1.5 (a hub id or a local copy); ``resources/sd15-random``
holds SD1.5's architecture configs, so :func:`build_random_sd` can make a random-init model of the real shapes
offline (benchmarks, smoke tests). All are read by :func:`load_components` through exactly the same
``from_pretrained(base, subfolder=...)`` calls, so the demo exercises the real loading path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

#: ``model.family`` values and the text-encoder/tokenizer subfolders each one needs.
FAMILIES = ("sd15", "sdxl")

#: Files a random-SD config directory (``resources/tiny-sd``, ``resources/sd15-random``) must hold.
TINY_CONFIG_FILES = (
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
)

#: ``model.base`` value that means "the tiny demo model built from ``model.tiny_config``".
TINY_BASE = "tiny"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable JSON config ({err})") from err


def _check_config_dir(config_dir: Path, what: str) -> None:
    missing = [name for name in TINY_CONFIG_FILES if not (config_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{config_dir}: {what} lacks {', '.join(missing)}")


def load_tokenizer(path: str | Path, subfolder: str | None = None) -> CLIPTokenizer:
    """Load a CLIP tokenizer from a local folder or hub id (``subfolder`` as in diffusers layouts)."""
    kwargs = {"subfolder": subfolder} if subfolder else {}
    return CLIPTokenizer.from_pretrained(str(path), **kwargs)


def build_tiny_sd(config_dir: str | Path, out_dir: str | Path, seed: int = 0) -> None:
    """Build the tiny demo model (``model.tiny_config``); see :func:`build_random_sd`."""
    _check_config_dir(Path(config_dir), "tiny-SD config dir (model.tiny_config)")
    build_random_sd(config_dir, out_dir, seed)


def build_random_sd(config_dir: str | Path, out_dir: str | Path, seed: int = 0) -> None:
    """Build a random-init Stable Diffusion from the configs in ``config_dir`` and save it as a diffusers folder.

    ``config_dir`` holds ``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/`` configs and a ``tokenizer/``
    (:data:`TINY_CONFIG_FILES`): ``resources/tiny-sd`` for the demo, ``resources/sd15-random`` for SD1.5's
    real architecture (~1.1B parameters, ~4 GB in fp32). Every component is created right after
    ``torch.manual_seed(seed + k)`` so the same seed always gives bit-identical weights. The folder is
    written to a temporary sibling and renamed into place, so ``out_dir`` is either absent/old or complete.
    Weights are saved as safetensors.
    """
    save_sd_folder(random_sd_pipeline(config_dir, seed), out_dir)


def random_sd_pipeline(config_dir: str | Path, seed: int = 0) -> StableDiffusionPipeline:
    """The random-init ``StableDiffusionPipeline`` that :func:`build_random_sd` saves, in memory.

    UNet, VAE and text encoder are created right after ``torch.manual_seed(seed)``, ``seed + 1`` and
    ``seed + 2``; :mod:`hardgen.pretrain.tiny_sd` starts from exactly these weights (so its frozen text encoder is the
    ``tiny`` base's). Raises ``ValueError`` naming the config file when the parts do not fit together.
    """
    config_dir = Path(config_dir)
    _check_config_dir(config_dir, "random-SD config dir")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(_read_json(config_dir / "unet" / "config.json"))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL.from_config(_read_json(config_dir / "vae" / "config.json"))
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(**_read_json(config_dir / "text_encoder" / "config.json"))
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler.from_config(_read_json(config_dir / "scheduler" / "scheduler_config.json"))
    tokenizer = load_tokenizer(config_dir / "tokenizer")
    if len(tokenizer) > text_config.vocab_size:
        raise ValueError(
            f"{config_dir / 'text_encoder' / 'config.json'}: vocab_size {text_config.vocab_size} is smaller "
            f"than the tokenizer ({len(tokenizer)} tokens)"
        )
    if unet.config.cross_attention_dim != text_config.hidden_size:
        raise ValueError(
            f"{config_dir / 'unet' / 'config.json'}: cross_attention_dim {unet.config.cross_attention_dim} "
            f"must equal the text encoder hidden_size {text_config.hidden_size}"
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_sd_folder(
    pipe: StableDiffusionPipeline, out_dir: str | Path, extra_files: Mapping[str, str] | None = None
) -> None:
    """Save ``pipe`` as a diffusers folder (safetensors) at ``out_dir``, atomically, plus ``extra_files``.

    ``extra_files`` maps names inside the folder (e.g. ``README.md``) to their text. Everything is written
    to a temporary sibling that is renamed into place, so ``out_dir`` is either absent/old or complete;
    an old folder is replaced only once the new one is whole.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        pipe.save_pretrained(tmp_dir, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp_dir / name).write_text(text)
        # mkdtemp makes the folder 0700 and safetensors writes 0600 files; a model folder that is shipped in
        # the repository or shared on a cluster must be readable by all
        for path in [tmp_dir, *tmp_dir.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if out_dir.exists():
            # Move the old folder aside first: a directory cannot be replaced in one rename.
            old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old_dir / "model")
            os.replace(tmp_dir, out_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.replace(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def resolve_base(base: str, tiny_dir: str | Path) -> str:
    """Map the ``model.base`` config value to what :func:`load_components` reads.

    ``"tiny"`` means the folder built by :func:`build_tiny_sd` at ``tiny_dir``; anything else (a local
    diffusers folder or a hub id) is passed through unchanged.
    """
    if not base:
        raise ValueError("model.base: empty; use 'tiny', a local diffusers folder or a hub id")
    return str(tiny_dir) if base == TINY_BASE else str(base)


def _check_base(base: str | Path) -> str:
    """Return a local folder as an absolute path; pass a hub id through; fail early on a missing folder."""
    text = str(base)
    path = Path(text).expanduser()
    if path.exists():
        return str(path)
    # A hub id is exactly "owner/name"; anything path-like that does not exist is a config mistake, and
    # catching it here avoids a slow, confusing hub lookup on an offline cluster.
    if text.startswith(("/", ".", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"{text}: base model folder (model.base) not found")
    return text


def load_components(
    base: str | Path,
    family: str = "sd15",
    dtype: torch.dtype = torch.float32,
    vae: str | Path | None = None,
) -> dict[str, Any]:
    """Load the frozen parts of a Stable Diffusion model, the same way for the tiny demo and for SD1.5/SDXL.

    Returns a dict with ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``noise_scheduler`` (a
    ``DDPMScheduler`` for training) and, for ``family="sdxl"``, also ``text_encoder_2`` and ``tokenizer_2``.
    ``vae`` optionally overrides the VAE with a separate folder or hub id holding an ``AutoencoderKL``
    (e.g. ``madebyollin/sdxl-vae-fp16-fix``). Models are in eval mode with gradients off.
    """
    if family not in FAMILIES:
        raise ValueError(f"model.family: {family!r} is not one of {FAMILIES}")
    base = _check_base(base)
    components: dict[str, Any] = {
        "noise_scheduler": DDPMScheduler.from_pretrained(base, subfolder="scheduler"),
        "tokenizer": load_tokenizer(base, subfolder="tokenizer"),
        "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
        "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype),
    }
    if vae is not None:
        components["vae"] = AutoencoderKL.from_pretrained(_check_base(vae), torch_dtype=dtype)
    else:
        components["vae"] = AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=dtype)
    if family == "sdxl":
        components["tokenizer_2"] = load_tokenizer(base, subfolder="tokenizer_2")
        components["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2")
    for name, component in components.items():
        if isinstance(component, torch.nn.Module):
            if name.startswith("text_encoder"):
                # diffusers took torch_dtype above; transformers renamed that argument across versions.
                component.to(dtype=dtype)
            component.eval()
            component.requires_grad_(False)
    return components
