"""results/tables/models.csv: every model a run builds, with its parameter count (rule models_table).

One row per component: the base generator's ``unet``, ``vae`` and text encoder(s) (``base.<part>``), each
``backbones.<key>`` extractor and each ``segment.archs.<key>`` segmenter (the feedback judge among them). The counts
are of the modules as hardgen builds them, made on torch's meta device (no weights are read or downloaded; a hub id
needs only its configs): the base's from its folder's configs (the SD1.5 UNet: 859,520,964), a backbone as
:func:`hardgen.scoring.features.load_backbone` builds it (the classifier dropped), a segmenter as
:func:`hardgen.segmentation.build.build_segmenter` does (PraNet without Res2Net's unused ImageNet classifier).
``dtype`` is the stored weights' dtype where the run has them locally (the base folder's safetensors), else the
dtype the module is built in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open

#: models.csv's columns.
COLUMNS = ["component", "class", "source", "params", "dtype"]
#: The base pipeline's parts that hold weights, in model_index.json's names.
BASE_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
#: safetensors header dtypes as torch names.
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _count(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _dtype(module: torch.nn.Module) -> str:
    return str(next(module.parameters()).dtype).removeprefix("torch.")


def _stored_dtype(folder: Path) -> str | None:
    """The dtype of the first tensor in ``folder``'s safetensors weights; None when it has none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    with safe_open(str(files[0]), framework="pt") as handle:
        name = next(iter(handle.keys()))
        dtype = handle.get_slice(name).get_dtype()
    return SAFETENSORS_DTYPES.get(dtype, dtype.lower())


def base_rows(base: str, source: str) -> list[dict[str, Any]]:
    """Rows of the base pipeline ``base`` (a diffusers folder or hub id): every part of :data:`BASE_PARTS` that its
    model_index.json lists, built on the meta device from the part's config. ``source`` fills the source column."""
    import diffusers
    import transformers
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(base)
    local = Path(base).is_dir()
    rows = []
    for part in BASE_PARTS:
        if not isinstance(index.get(part), list) or index[part][1] is None:
            continue
        library, class_name = index[part]
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            with torch.device("meta"):
                module = cls.from_config(cls.load_config(base, subfolder=part))
        elif library == "transformers":
            cls = getattr(transformers, class_name)
            config = transformers.AutoConfig.from_pretrained(base, subfolder=part)
            with torch.device("meta"):
                module = cls(config)
        else:
            raise ValueError(f"{base}: model_index.json's {part} comes from {library!r}, not diffusers or transformers")
        stored = _stored_dtype(Path(base) / part) if local else None
        rows.append({"component": f"base.{part}", "class": class_name, "source": source, "params": _count(module),
                     "dtype": stored or _dtype(module)})
    return rows


def backbone_row(key: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The row of ``backbones.<key>`` (its extractor entry), built as :func:`load_backbone` builds it on the meta
    device; a pretrained transformers model's architecture is read from its config (hub id or folder)."""
    from hardgen.scoring.features import BackboneSpec, load_backbone

    spec = BackboneSpec.from_config(key, dict(entry))
    if spec.source == "transformers" and spec.pretrained and not (Path(spec.name) / "config.json").is_file():
        from transformers import ViTConfig

        spec = dataclasses.replace(spec, config=ViTConfig.from_pretrained(spec.name).to_dict())
    built = dataclasses.replace(spec, pretrained=False, checkpoint=None)
    with torch.device("meta"):
        extractor = load_backbone(built, device="meta", config_key=key)
    weights = spec.checkpoint or ("pretrained" if spec.pretrained else "random init")
    return {"component": f"backbones.{key}", "class": type(extractor.model).__name__,
            "source": f"{spec.source} {spec.name} ({weights})", "params": _count(extractor.model),
            "dtype": _dtype(extractor.model)}


def segmenter_row(key: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The row of ``segment.archs.<key>``, built with random weights (:func:`build_random_segmenter`: its
    encoder_weights and checkpoint name the source only) on the meta device."""
    from hardgen.segmentation.build import build_random_segmenter

    with torch.device("meta"):
        spec, model = build_random_segmenter(entry, key)
    weights = spec.checkpoint or (f"encoder {spec.encoder_weights}" if spec.encoder_weights else "random init")
    return {"component": f"segment.archs.{key}", "class": type(model).__name__,
            "source": f"{spec.arch} / {spec.encoder} ({weights})", "params": _count(model), "dtype": _dtype(model)}


def models_table(base: str, base_source: str, backbones: Mapping[str, Mapping[str, Any]],
                 archs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """models.csv (:data:`COLUMNS`): the base's parts, then ``backbones`` and ``archs`` (extractor / segmenter
    entries by config key) in their order."""
    rows = base_rows(base, base_source)
    rows += [backbone_row(key, entry) for key, entry in backbones.items()]
    rows += [segmenter_row(key, entry) for key, entry in archs.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def base_source(base: str, tiny_config: str | None) -> str:
    """The source column of the base's rows: ``random init from <tiny_config>`` for the workflow-built base
    (model.base: tiny), else the local folder or hub id."""
    if tiny_config is not None:
        return f"random init from {tiny_config}"
    return f"{base} (local folder)" if Path(base).is_dir() else f"{base} (hub)"

