"""Frozen timm / transformers backbones, mask-box crops and the real-data prototype.

This module is the ONE place where "feature of a sample" and "distance to the prototype" are
defined; the hardness loss (``train``), the per-sample scores (``score``) and the analysis
(``report``) all go through :func:`load_backbone`, :func:`crop_to_mask` and
:func:`prototype_distance`, so they can never disagree.

Following Wan et al.: crop the image to the bounding box of the mask foreground padded by
``pad`` px, resize, normalise with the backbone's data config, take the CLS token of the last
hidden state (ViTs) or the globally pooled feature (CNNs). The prototype is the mean feature of
the real training crops.

Two sources (``backbones.<key>.source``): ``timm`` (default; normalised with the model's timm data config) and
``transformers`` (a ``ViTModel`` from a hub id or a local folder, never remote code; the CLS token of
``last_hidden_state``, normalised with the image processor's mean/std, 0.5 for google/vit-*: the authors'
extractor). ``resize_via`` (the authors' 512) resizes each crop to that square first, then to ``input_size``.

The prototype's recipe (``backbones.<key>.prototype_crop``, :data:`PROTOTYPE_CROPS`): ``hardgen`` crops the real
images as the loss and the scores crop every sample (brought to ``model.resolution``, then ``resize_via``);
``native`` is the authors' prototype script (``utils/compute_feature.py:26-30``): the box + ``pad`` px at the
image's native resolution, resized straight to ``input_size``. The file records its recipe;
:func:`check_prototype` is what every reader checks against.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import timm.data
import torch
import torch.nn.functional as F
from safetensors import safe_open
from timm.layers import resample_abs_pos_embed
from tqdm.auto import tqdm

from hardgen.config.settings import BackboneConfig
from hardgen.config.validation import timm_name_problem
from hardgen.core import io
from hardgen.core.io import DataError
from hardgen.core.weights import load_state_dict, save_state_dict

log = logging.getLogger("hardgen.scoring.features")

#: Seed of the weights a backbone gets when it is neither pretrained nor given a checkpoint.
RANDOM_INIT_SEED = 0

#: Spec fields accepted from a ``backbones.<key>`` config entry: what a feature extractor reads of it.
_SPEC_FIELDS = tuple(BackboneConfig.job_keys("extractor"))
#: Where a backbone comes from (``backbones.<key>.source``).
SOURCES = ("timm", "transformers")
#: Entry fields that are not the feature extractor's: the hardness loss's margin, the prototype's recipe and file.
_OTHER_FIELDS = tuple(key for key in BackboneConfig.keys() if key not in _SPEC_FIELDS)
#: How rule prototype crops the real images (``backbones.<key>.prototype_crop``): as every sample is cropped
#: (``hardgen``) or at their native resolution, straight to ``input_size`` (``native``, the authors' script).
PROTOTYPE_CROPS = ("hardgen", "native")


@dataclass(frozen=True)
class BackboneSpec:
    """A frozen feature extractor as configured under ``backbones.<key>``.

    ``checkpoint`` (a local .safetensors or plain-tensor .pt) takes precedence over
    ``pretrained`` so clusters without internet can supply the weights themselves.
    """

    name: str
    pretrained: bool = False
    checkpoint: str | None = None
    input_size: int = 224
    #: ``timm`` (a timm model name) or ``transformers`` (a ViTModel hub id or local folder)
    source: str = "timm"
    #: resize each mask-box crop to this square first (bilinear), then to ``input_size`` (the authors' 512)
    resize_via: int | None = None
    #: transformers only: ``ViTConfig`` keyword arguments used when the name is not a folder with a config.json
    #: and nothing is downloaded (random weights or a ``checkpoint``); a JSON-able mapping
    config: dict[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def from_config(cls, key: str, entry: dict[str, Any]) -> BackboneSpec:
        """Build a spec from the ``backbones.<key>`` mapping, naming the key on bad values."""
        if not isinstance(entry, dict):
            raise ValueError(f"backbones.{key}: expected a mapping with {', '.join(_SPEC_FIELDS)}")
        unknown = sorted(set(entry) - set(_SPEC_FIELDS) - set(_OTHER_FIELDS))
        if unknown:
            raise ValueError(f"backbones.{key}: unknown keys {unknown}")
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"backbones.{key}.name: a timm model name or transformers hub id / folder is required")
        size = entry.get("input_size", 224)
        if not isinstance(size, int) or isinstance(size, bool) or size < 16:
            raise ValueError(f"backbones.{key}.input_size: expected an integer >= 16, got {size!r}")
        source = entry.get("source") or "timm"
        if source not in SOURCES:
            raise ValueError(f"backbones.{key}.source: expected one of {list(SOURCES)}, got {source!r}")
        via = entry.get("resize_via")
        if via is not None and (not isinstance(via, int) or isinstance(via, bool) or via < 16):
            raise ValueError(f"backbones.{key}.resize_via: expected null or an integer >= 16, got {via!r}")
        config = entry.get("config")
        if config is not None and (source != "transformers" or not isinstance(config, dict)):
            raise ValueError(f"backbones.{key}.config: only a mapping of ViTConfig arguments with "
                             f"source: transformers, got {config!r} with source {source!r}")
        return cls(
            name=entry["name"],
            pretrained=bool(entry.get("pretrained", False)),
            checkpoint=entry.get("checkpoint"),
            input_size=size,
            source=source,
            resize_via=via,
            config=dict(config) if config is not None else None,
        )


class FeatureExtractor(torch.nn.Module):
    """A frozen timm model (or transformers ViTModel) mapping (B, 3, H, W) images in [0, 1] to (B, D) features.

    Parameters never require grad, but the forward pass is differentiable w.r.t. the input
    images, because the hardness loss backpropagates through it into the generator.
    ``mean``/``std`` default to the timm data config; a transformers model passes its processor's.
    ``resize_via``: the crop size every mask-box crop is resized to before ``input_size`` (None: directly).
    """

    def __init__(self, model: torch.nn.Module, name: str, input_size: int, *, source: str = "timm",
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 feature_dim: int | None = None, resize_via: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.input_size = int(input_size)
        self.source = source
        self.resize_via = resize_via
        if mean is None or std is None:
            data_cfg = timm.data.resolve_model_data_config(model)
            mean, std = data_cfg["mean"], data_cfg["std"]
        # Non-persistent: the normalisation comes from the model's config, not from checkpoints.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.feature_dim = int(feature_dim or getattr(model, "head_hidden_size", None) or model.num_features)
        self.model.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode: a parent's ``.train()`` must not update BatchNorm statistics."""
        return super().train(False)

    def preprocess(self, images01: torch.Tensor) -> torch.Tensor:
        """Resize (bilinear, antialiased) to ``input_size`` and normalise with the timm data config."""
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape (B, 3, H, W), got {tuple(images01.shape)}")
        x = images01.to(self.mean.dtype)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.mean) / self.std

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, D) pre-logits features (CLS token for ViTs)."""
        x = self.preprocess(images01)
        if self.source == "transformers":
            # the CLS token of the last hidden state (after the final LayerNorm), as the authors read it
            resize_pos = x.shape[-1] != self.model.config.image_size
            return self.model(pixel_values=x, interpolate_pos_encoding=resize_pos).last_hidden_state[:, 0]
        tokens = self.model.forward_features(x)
        return self.model.forward_head(tokens, pre_logits=True)


def _is_vit(model: torch.nn.Module) -> bool:
    return isinstance(model, timm.models.VisionTransformer)


def load_backbone_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local feature-backbone checkpoint (``backbones.<key>.checkpoint``) into the timm ``model`` built without
    a classifier head: the file's ImageNet head is dropped and a ViT's position embeddings resampled to the model's
    grid; a key or shape mismatch raises ValueError naming the file."""
    path = Path(path)
    state = load_state_dict(path)
    # The extractor is built with num_classes=0, so an ImageNet head in the file is expected and unused.
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    heads = [classifier] if isinstance(classifier, str) else list(classifier or [])
    state = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
    # A ViT checkpoint trained at 224 px has more position embeddings than a smaller input needs.
    if _is_vit(model) and "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=0 if model.no_embed_class else model.num_prefix_tokens,
        )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{path}: checkpoint does not fit the backbone ({err})") from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: checkpoint keys do not match the backbone: "
            f"missing {result.missing_keys[:5]} ({len(result.missing_keys)} total), "
            f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)} total)"
        )


def load_backbone(
    spec: BackboneSpec, device: str | torch.device = "cpu", config_key: str | None = None
) -> FeatureExtractor:
    """Build the frozen extractor described by ``spec`` on ``device``.

    ``config_key`` (e.g. ``"vit"``) only makes error messages name ``backbones.<key>.*``.
    """
    where = f"backbones.{config_key}" if config_key else "backbone"
    if spec.source == "transformers":
        return _load_transformers_vit(spec, device, where)
    problem = timm_name_problem(spec.name)
    if problem:
        raise ValueError(f"{where}.name: {problem}")
    if spec.checkpoint is not None and not Path(spec.checkpoint).is_file():
        raise FileNotFoundError(f"{where}.checkpoint: {spec.checkpoint}: file not found")
    kwargs: dict[str, Any] = {"num_classes": 0}
    pretrained_cfg = timm.models.get_pretrained_cfg(spec.name)
    # Fixed-input-size models (ViTs) bake the token grid into the position embeddings.
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = spec.input_size
    use_hub = spec.pretrained and spec.checkpoint is None
    try:
        # A fixed seed makes random-init backbones (the demo) identical in every process: the prototype,
        # the training loss and the scores must all see the same network. The global RNG is left alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = timm.create_model(spec.name, pretrained=use_hub, **kwargs)
    except Exception as err:
        if use_hub:
            raise RuntimeError(
                f"{where}.pretrained: could not fetch pretrained weights for {spec.name!r} "
                f"(offline? set {where}.checkpoint to a local .safetensors): {err}"
            ) from err
        raise ValueError(f"{where}: cannot build {spec.name!r} at input_size {spec.input_size}: {err}") from err
    if _is_vit(model) and model.global_pool != "token":
        model.reset_classifier(0, global_pool="token")  # the paper uses the CLS token
    if spec.checkpoint is not None:
        load_backbone_checkpoint(model, spec.checkpoint)
    return FeatureExtractor(model, spec.name, spec.input_size, resize_via=spec.resize_via).to(device)


def _load_transformers_vit(spec: BackboneSpec, device: str | torch.device, where: str) -> FeatureExtractor:
    """A transformers ``ViTModel`` (no pooler) from a hub id or local folder; never remote code.

    ``pretrained``: ``ViTModel.from_pretrained(name)`` (a hub id, or a local folder for offline clusters) and the
    normalisation of ``ViTImageProcessor.from_pretrained``. Otherwise seeded random weights on the architecture of
    ``name`` when it is a local folder with a ``config.json``, else of ``config`` (``ViTConfig`` arguments); the
    normalisation is then the folder's processor or transformers' ViT default (mean = std = 0.5, as google/vit-*).
    """
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    local = Path(spec.name)
    if spec.checkpoint is not None:
        # transformers maps the file's key names onto its module layout in from_pretrained (they differ between
        # versions), so a local copy is a folder (config.json + model.safetensors), given as the name
        raise ValueError(f"{where}.checkpoint: not used with source transformers; set {where}.name to the local "
                         "folder holding config.json and model.safetensors (save_pretrained / a hub snapshot)")
    use_hub = spec.pretrained
    try:
        if use_hub:
            model = ViTModel.from_pretrained(spec.name, add_pooling_layer=False, trust_remote_code=False)
            processor = ViTImageProcessor.from_pretrained(spec.name)
        else:
            if (local / "config.json").is_file():
                vit_config = ViTConfig.from_pretrained(str(local))
            elif spec.config is not None:
                vit_config = ViTConfig(**spec.config)
            else:
                raise ValueError(f"{where}: without pretrained weights a transformers backbone needs a local folder "
                                 f"with config.json as name or {where}.config (ViTConfig arguments); got "
                                 f"{spec.name!r}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                model = ViTModel(vit_config, add_pooling_layer=False)
            has_processor = (local / "preprocessor_config.json").is_file()
            processor = ViTImageProcessor.from_pretrained(str(local)) if has_processor else ViTImageProcessor()
    except OSError as err:
        raise RuntimeError(f"{where}: could not load transformers ViTModel {spec.name!r} (offline? set {where}.name "
                           f"to a local folder holding config.json and the weights): {err}") from err
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    return FeatureExtractor(model, spec.name, spec.input_size, source="transformers", mean=mean, std=std,
                            feature_dim=model.config.hidden_size, resize_via=spec.resize_via).to(device)


def _as_bool_masks(masks: torch.Tensor, images01: torch.Tensor) -> np.ndarray:
    """(B, H, W) bool numpy masks from (B, 1, H, W) or (B, H, W) bool/float tensors."""
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks: expected (B, 1, H, W) or (B, H, W), got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks: expected (B, 1, H, W) or (B, H, W), got {tuple(masks.shape)}")
    if masks.shape[0] != images01.shape[0] or masks.shape[-2:] != images01.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images01.shape)}")
    masks = masks.detach()
    binary = masks if masks.dtype == torch.bool else masks > 0.5
    return binary.cpu().numpy()


def crop_to_mask(images01: torch.Tensor, masks: torch.Tensor, pad: int, out_size: int,
                 via: int | None = None) -> torch.Tensor:
    """Crop each image to its mask's foreground box (+``pad`` px) and resize to ``out_size``².

    ``via`` (``backbones.<key>.resize_via``): resize the crop to ``via``² first (bilinear, no antialias, as
    the authors' ``F.interpolate`` to 512), then to ``out_size``². Differentiable w.r.t. ``images01``; an empty
    mask keeps the whole image. Returns (B, 3, out_size, out_size).
    """
    if images01.ndim != 4:
        raise ValueError(f"images: expected (B, C, H, W), got {tuple(images01.shape)}")
    binary = _as_bool_masks(masks, images01)
    crops = []
    for image, mask in zip(images01, binary):
        box = io.fg_bbox(mask, pad)
        x0, y0, x1, y1 = box if box is not None else (0, 0, mask.shape[1], mask.shape[0])
        crop = image[None, :, y0:y1, x0:x1]
        if via is not None:
            crop = F.interpolate(crop, size=(via, via), mode="bilinear", align_corners=False)
        crops.append(
            F.interpolate(crop, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
        )
    return torch.cat(crops, dim=0)


def prototype_distance(features: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """‖f − p‖₂ per sample: (B, D), (D,) -> (B,). The one distance used everywhere."""
    if features.ndim != 2 or prototype.ndim != 1 or features.shape[1] != prototype.shape[0]:
        raise ValueError(
            f"features {tuple(features.shape)} and prototype {tuple(prototype.shape)}: expected (B, D) and (D,)"
        )
    return torch.linalg.vector_norm(features - prototype.to(features), dim=1)


def _id_column(pairs: pd.DataFrame) -> str:
    for column in ("sample_id", "id"):
        if column in pairs.columns:
            return column
    raise DataError(f"pairs table: needs a 'sample_id' or 'id' column, has {list(pairs.columns)}")


def iter_features(
    backbone: FeatureExtractor,
    pairs: pd.DataFrame,
    pad: int,
    batch_size: int,
    size: int | None = None,
    resolution: int | None = None,
    crop: str = "hardgen",
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """Yield (ids, (b, D) features) batch by batch; only one batch of images is in memory at a time.

    With ``resolution`` (the generator's, ``model.resolution``) each image and its mask first go through
    :func:`hardgen.core.io.fit_square`, the transform the generator was trained on; generated images are
    already that size, so real and generated samples are compared at the same scale. Images are then
    cropped one by one to the mask box, resized to ``size`` (default: the backbone's input size) and
    stacked. Runs without autograd.

    ``crop`` (:data:`PROTOTYPE_CROPS`): ``native`` crops each image at its own size (no ``resolution``) and resizes
    the crop straight to ``size``, without the backbone's ``resize_via`` (the authors' prototype recipe).
    """
    if crop not in PROTOTYPE_CROPS:
        raise ValueError(f"crop: expected one of {list(PROTOTYPE_CROPS)}, got {crop!r}")
    if crop == "native" and resolution is not None:
        raise ValueError(f"crop native: images keep their native size, got resolution {resolution}")
    via = backbone.resize_via if crop == "hardgen" else None
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    id_col = _id_column(pairs)
    missing = {"image", "mask"} - set(pairs.columns)
    if missing:
        raise DataError(f"pairs table: missing columns {sorted(missing)}")
    size = size or backbone.input_size
    device = backbone.mean.device
    n_batches = math.ceil(len(pairs) / batch_size)
    for start in tqdm(range(0, len(pairs), batch_size), total=n_batches, desc=f"features {backbone.name}"):
        rows = pairs.iloc[start : start + batch_size]
        crops = []
        for image_path, mask_path in zip(rows["image"], rows["mask"]):
            image = io.read_rgb(image_path)
            mask = io.read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"{mask_path}: mask size {mask.shape} differs from image {image_path} {image.shape[:2]}"
                )
            if resolution is not None:
                image, mask = io.fit_square(image, resolution), io.fit_square(mask, resolution, is_mask=True)
            image_t = torch.tensor(image).permute(2, 0, 1)[None].float().div_(255.0)
            crops.append(crop_to_mask(image_t, torch.tensor(mask)[None], pad, size, via=via))
        with torch.inference_mode():
            features = backbone(torch.cat(crops).to(device)).float().cpu()
        yield [str(i) for i in rows[id_col]], features


def extract_features(
    backbone: FeatureExtractor,
    pairs: pd.DataFrame,
    pad: int,
    batch_size: int,
    size: int | None = None,
    resolution: int | None = None,
    crop: str = "hardgen",
) -> tuple[list[str], torch.Tensor]:
    """Features of every image/mask pair in ``pairs`` (columns ``sample_id``/``id``, ``image``, ``mask``).

    Returns (ids, (N, D) float32 tensor). Images are streamed in batches; only features are kept. ``crop``: see
    :func:`iter_features`.
    """
    ids: list[str] = []
    chunks: list[torch.Tensor] = []
    for batch_ids, features in iter_features(backbone, pairs, pad, batch_size, size, resolution, crop):
        ids.extend(batch_ids)
        chunks.append(features)
    if not chunks:
        return ids, torch.empty(0, backbone.feature_dim)
    return ids, torch.cat(chunks)


def real_training_pairs(manifest_df: pd.DataFrame) -> pd.DataFrame:
    """The training rows whose mask has foreground (empty masks carry no polyp to crop)."""
    missing = {"split", "fg_fraction", "image", "mask"} - set(manifest_df.columns)
    if missing:
        raise DataError(f"manifest: missing columns {sorted(missing)}")
    train = manifest_df[manifest_df["split"] == "train"]
    usable = train[train["fg_fraction"] > 0]
    if len(usable) < len(train):
        log.info("skipping %d training masks without foreground", len(train) - len(usable))
    return usable.reset_index(drop=True)


@dataclass(frozen=True)
class Prototype:
    """The real-data prototype and the spread of real distances to it."""

    prototype: torch.Tensor
    real_mean: float
    real_std: float
    backbone: str
    n: int
    #: the resolution real images were brought to (None: their native size)
    resolution: int | None = None
    #: how the real images were cropped (:data:`PROTOTYPE_CROPS`; files without the record: hardgen)
    crop: str = "hardgen"
    #: the backbone input size (None: not recorded)
    input_size: int | None = None
    #: the two-step resize the crops went through (None: straight), when the file records it (``records_resize``)
    resize_via: int | None = None
    records_resize: bool = False


def compute_prototype(
    manifest_df: pd.DataFrame,
    spec: BackboneSpec,
    out_path: str | Path,
    pad: int = 10,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    config_key: str | None = None,
    resolution: int | None = None,
    crop: str = "hardgen",
) -> dict[str, Any]:
    """Mean feature of the real training crops, saved to ``out_path`` (.safetensors).

    ``crop`` (``backbones.<key>.prototype_crop``): ``hardgen`` brings each real image to ``resolution`` (the
    generator's) first and resizes its crop through the backbone's ``resize_via`` (see :func:`iter_features`), so
    the prototype and the real spread describe images at the scale and through the resize generated samples have;
    ``native`` (the authors' prototype script) crops each image at its own size, ``pad`` native px around the mask
    box, and resizes the crop straight to ``input_size`` (``resolution`` is then not used).

    Tensors: ``prototype`` (D,), ``real_distances`` (N,). Metadata: ``real_mean_distance``,
    ``real_std_distance`` (sample sd), ``backbone``, ``n``, ``input_size``, ``pad``, ``resolution`` (``native``
    with crop native), ``crop``, ``resize_via`` (``none``: straight), ``sample_ids`` (JSON). Returns the metadata as a
    dict (numbers as numbers).
    """
    if crop not in PROTOTYPE_CROPS:
        raise ValueError(f"backbones.{config_key or '?'}.prototype_crop: expected one of {list(PROTOTYPE_CROPS)}, "
                         f"got {crop!r}")
    if crop == "native":
        resolution = None
    pairs = real_training_pairs(manifest_df)
    if len(pairs) < 2:
        raise DataError(f"manifest: need >= 2 training samples with foreground for a prototype, found {len(pairs)}")
    backbone = load_backbone(spec, device, config_key=config_key)
    ids, features = extract_features(backbone, pairs, pad, batch_size, resolution=resolution, crop=crop)
    prototype = features.mean(dim=0)
    distances = prototype_distance(features, prototype)
    summary = {
        "real_mean_distance": float(distances.mean()),
        "real_std_distance": float(distances.std()),
        "backbone": spec.name,
        "n": len(ids),
        "input_size": spec.input_size,
        "pad": pad,
        "resolution": resolution if resolution is not None else "native",
        "crop": crop,
        "resize_via": spec.resize_via if crop == "hardgen" and spec.resize_via is not None else "none",
    }
    if not summary["real_std_distance"] > 0:
        raise DataError(f"manifest: real distances to the prototype have zero spread ({len(ids)} samples)")
    metadata = {k: str(v) for k, v in summary.items()} | {"sample_ids": json.dumps(ids)}
    save_state_dict(out_path, {"prototype": prototype, "real_distances": distances}, metadata=metadata)
    log.info("prototype %s (crop %s): n=%d, real distance %.4g ± %.4g", spec.name, crop, len(ids),
             summary["real_mean_distance"], summary["real_std_distance"])
    return summary


def load_prototype(path: str | Path) -> Prototype:
    """Read a prototype written by :func:`compute_prototype` (rule prototype's, or a file of the user's:
    ``backbones.<key>.prototype``); pickled files and bare vectors are refused."""
    path = Path(path)
    tensors = load_state_dict(path)  # refuses pickles before anything else is looked at
    if path.suffix != ".safetensors":
        # a bare vector (the authors' .npy / .pt) lacks the real distances' spread the z-scores and margins read
        raise DataError(f"{path}: a prototype must be a .safetensors file written by compute_prototype (rule "
                        "prototype): the vector with the real training features' distances to it")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    needed = ("real_mean_distance", "real_std_distance", "backbone", "n")
    crop = metadata.get("crop", "hardgen")  # files written before the record: every one was hardgen's crop
    if crop not in PROTOTYPE_CROPS:
        raise DataError(f"{path}: unknown prototype crop {crop!r} (expected one of {list(PROTOTYPE_CROPS)})")
    missing = [k for k in needed if k not in metadata] + [k for k in ("prototype",) if k not in tensors]
    if missing:
        raise DataError(f"{path}: not a hardgen prototype (missing {missing})")
    return Prototype(
        prototype=tensors["prototype"].float(),
        real_mean=float(metadata["real_mean_distance"]),
        real_std=float(metadata["real_std_distance"]),
        backbone=metadata["backbone"],
        n=int(metadata["n"]),
        resolution=None if metadata.get("resolution", "native") == "native" else int(metadata["resolution"]),
        crop=crop,
        input_size=int(metadata["input_size"]) if "input_size" in metadata else None,
        resize_via=None if metadata.get("resize_via", "none") == "none" else int(metadata["resize_via"]),
        records_resize="resize_via" in metadata,
    )


def check_prototype(prototype: Prototype, path: str | Path, backbone: FeatureExtractor, resolution: int | None,
                    config_key: str | None = None) -> None:
    """Refuse a prototype that does not describe ``backbone``'s features of real images at ``resolution``.

    Checked: the backbone name, the feature dimension, the input size (when recorded) and, for a ``hardgen`` crop,
    the resolution the real images were brought to and the ``resize_via`` (when recorded): the loss and the scores
    crop every sample that way. A ``native`` crop (the authors' recipe) is made at the images' own size by design,
    so it fits any ``model.resolution``. Errors name ``backbones.<key>`` and the file.
    """
    where = f"backbones.{config_key or '?'}'s prototype {path}"
    if prototype.backbone != backbone.name:
        raise ValueError(f"{where}: built with {prototype.backbone!r}, but backbones.{config_key or '?'}.name is "
                         f"{backbone.name!r}")
    dim = prototype.prototype.shape[0] if prototype.prototype.ndim == 1 else None
    if dim != backbone.feature_dim:
        raise ValueError(f"{where}: a vector of shape {tuple(prototype.prototype.shape)}, but {backbone.name!r} "
                         f"gives {backbone.feature_dim}-dimensional features")
    if prototype.input_size is not None and prototype.input_size != backbone.input_size:
        raise ValueError(f"{where}: computed at input_size {prototype.input_size}, but backbones."
                         f"{config_key or '?'}.input_size is {backbone.input_size}")
    if prototype.crop == "native":
        if prototype.resolution is not None:
            raise ValueError(f"{where}: crop native, yet made at resolution {prototype.resolution}")
        return
    if prototype.resolution != resolution:
        raise ValueError(f"{where}: computed at resolution {prototype.resolution or 'native'}, used at "
                         f"{resolution or 'native'} (model.resolution changed? rerun the prototype rule)")
    if prototype.records_resize and prototype.resize_via != backbone.resize_via:
        raise ValueError(f"{where}: its crops were resized via {prototype.resize_via or 'none'}, but backbones."
                         f"{config_key or '?'}.resize_via is {backbone.resize_via}")
