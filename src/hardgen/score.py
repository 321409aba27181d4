"""Per-sample hardness: distance of a sample's feature to the real prototype, and its z-score.

``z = (distance − real_mean) / real_std`` uses the spread of the REAL training features (stored
with the prototype), so real samples are ~N(0, 1) by construction and z values are comparable
across backbones whose feature norms differ by orders of magnitude.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import torch

from hardgen import io
from hardgen.features import (
    BackboneSpec,
    iter_features,
    load_backbone,
    load_prototype,
    prototype_distance,
    real_training_pairs,
)
from hardgen.io import DataError

log = logging.getLogger("hardgen.score")

SCORE_COLUMNS = ["sample_id", "variant", "backbone", "distance", "z"]


def score_samples(
    pairs_df: pd.DataFrame,
    backbone_spec: BackboneSpec,
    prototype_path: str | Path,
    variant: str,
    pad: int = 10,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    backbone_key: str | None = None,
    resolution: int | None = None,
) -> pd.DataFrame:
    """Score every image/mask pair (columns ``sample_id``/``id``, ``image``, ``mask``).

    ``resolution``: the generator's resolution; every image is first brought to it with the generator's
    training transform (:func:`hardgen.io.fit_square`, a no-op for generated images), and it must be the
    resolution the prototype was computed at.

    Returns a DataFrame with columns ``sample_id, variant, backbone, distance, z``; ``backbone``
    holds ``backbone_key`` (the config key, e.g. ``cnn``), defaulting to the timm name. Images
    are streamed batch by batch and only distances are kept, so memory does not grow with N.
    """
    prototype = load_prototype(prototype_path)
    if prototype.backbone != backbone_spec.name:
        raise ValueError(
            f"{prototype_path}: prototype was built with {prototype.backbone!r}, "
            f"but backbones.{backbone_key or '?'}.name is {backbone_spec.name!r}"
        )
    if prototype.resolution != resolution:
        raise ValueError(
            f"{prototype_path}: prototype computed at resolution {prototype.resolution or 'native'}, "
            f"scoring at {resolution or 'native'} (model.resolution changed? rerun the prototype rule)"
        )
    backbone = load_backbone(backbone_spec, device, config_key=backbone_key)
    if backbone.feature_dim != prototype.prototype.shape[0]:
        raise ValueError(
            f"{prototype_path}: prototype has {prototype.prototype.shape[0]} dims, "
            f"backbone gives {backbone.feature_dim}"
        )
    ids: list[str] = []
    distances: list[torch.Tensor] = []
    for batch_ids, features in iter_features(backbone, pairs_df, pad, batch_size, resolution=resolution):
        ids.extend(batch_ids)
        distances.append(prototype_distance(features, prototype.prototype))
    distance = torch.cat(distances).double().numpy() if distances else []
    frame = pd.DataFrame(
        {
            "sample_id": ids,
            "variant": variant,
            "backbone": backbone_key or backbone_spec.name,
            "distance": distance,
        },
        columns=SCORE_COLUMNS[:4],
    )
    frame["z"] = (frame["distance"] - prototype.real_mean) / prototype.real_std
    return frame[SCORE_COLUMNS]


def score_real(
    manifest_df: pd.DataFrame,
    backbone_spec: BackboneSpec,
    prototype_path: str | Path,
    pad: int = 10,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    backbone_key: str | None = None,
    resolution: int | None = None,
) -> pd.DataFrame:
    """Score the real training samples (the prototype's own set) as the reference, variant ``real``."""
    return score_samples(
        real_training_pairs(manifest_df), backbone_spec, prototype_path, "real", pad, batch_size, device, backbone_key,
        resolution,
    )


def score_variant(
    manifest_path: str | Path,
    backbones: Mapping[str, BackboneSpec],
    prototype_paths: Mapping[str, str | Path],
    variant: str,
    out_path: str | Path,
    pad: int = 10,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    resolution: int | None = None,
) -> pd.DataFrame:
    """Workflow entry point: score one variant with every backbone and write ``results/scores/<variant>.csv``.

    ``manifest_path`` is the data manifest for ``variant == "real"`` (training rows are scored),
    else a generated manifest (``sample_id, image, mask, ...``). ``backbones`` maps config keys to
    specs; ``prototype_paths`` maps the same keys to prototype files. Rows are ordered by backbone
    key then manifest order.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: manifest not found")
    manifest = pd.read_csv(manifest_path)
    missing = sorted(set(backbones) - set(prototype_paths))
    if missing:
        raise ValueError(f"backbones {missing}: no prototype file given")
    tables = []
    for key in sorted(backbones):
        if variant == "real":
            table = score_real(manifest, backbones[key], prototype_paths[key], pad, batch_size, device, key, resolution)
        else:
            table = score_samples(manifest, backbones[key], prototype_paths[key], variant, pad, batch_size, device, key,
                                  resolution)
        log.info("%s/%s: %d samples, mean z %.3f", variant, key, len(table), table["z"].mean())
        tables.append(table)
    if not tables:
        raise ValueError("backbones: at least one backbone is needed to score")
    scores = pd.concat(tables, ignore_index=True)
    if scores.empty:
        raise DataError(f"{manifest_path}: no samples to score for variant {variant!r}")
    io.write_csv(out_path, scores)
    return scores
