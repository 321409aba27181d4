"""Per-sample hardness: distance of a sample's feature to the real prototype, and its z-score.

``z = (distance − real_mean) / real_std`` uses the spread of the REAL training features (stored
with the prototype), so real samples are ~N(0, 1) by construction and z values are comparable
across backbones whose feature norms differ by orders of magnitude.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from hardgen.core import io
from hardgen.core.io import DataError
from hardgen.core.weights import save_state_dict
from hardgen.scoring.features import (
    BackboneSpec,
    FeatureExtractor,
    check_prototype,
    iter_features,
    load_backbone,
    load_prototype,
    prototype_distance,
    real_training_pairs,
)

log = logging.getLogger("hardgen.scoring.score")

SCORE_COLUMNS = ["sample_id", "variant", "backbone", "distance", "z"]


def score_samples_with_features(
    pairs_df: pd.DataFrame,
    backbone_spec: BackboneSpec,
    prototype_path: str | Path,
    variant: str,
    pad: int = 10,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    backbone_key: str | None = None,
    resolution: int | None = None,
    backbone: FeatureExtractor | None = None,
) -> tuple[pd.DataFrame, torch.Tensor]:
    """Score every image/mask pair (columns ``sample_id``/``id``, ``image``, ``mask``); also return the features.

    ``resolution``: the generator's resolution; every image is first brought to it with the generator's
    training transform (:func:`hardgen.core.io.fit_square`, a no-op for generated images); the prototype must fit
    it (:func:`hardgen.scoring.features.check_prototype`).

    Returns a DataFrame with columns ``sample_id, variant, backbone, distance, z``; ``backbone``
    holds ``backbone_key`` (the config key, e.g. ``cnn``), defaulting to the timm name. Images
    are streamed batch by batch; besides the table, the (N, D) float32 features (rows in table order)
    are returned, for the report's real-vs-generated feature plot. ``backbone``: ``backbone_spec``'s extractor
    already loaded (:func:`hardgen.scoring.features.load_backbone`; the same network, it is seeded), else it is loaded here.
    """
    prototype = load_prototype(prototype_path)
    if backbone is None:
        backbone = load_backbone(backbone_spec, device, config_key=backbone_key)
    elif (backbone.name, backbone.input_size) != (backbone_spec.name, backbone_spec.input_size):
        raise ValueError(f"backbones.{backbone_key or '?'}: the loaded extractor is {backbone.name!r} at "
                         f"{backbone.input_size} px, the spec {backbone_spec.name!r} at {backbone_spec.input_size} px")
    check_prototype(prototype, prototype_path, backbone, resolution, backbone_key)
    ids: list[str] = []
    distances: list[torch.Tensor] = []
    chunks: list[torch.Tensor] = []
    for batch_ids, features in iter_features(backbone, pairs_df, pad, batch_size, resolution=resolution):
        ids.extend(batch_ids)
        distances.append(prototype_distance(features, prototype.prototype))
        chunks.append(features.float().cpu())
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
    features = torch.cat(chunks) if chunks else torch.empty(0, backbone.feature_dim)
    return frame[SCORE_COLUMNS], features


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
    features_path: str | Path | None = None,
    fidelity_path: str | Path | None = None,
    extractors: Mapping[str, FeatureExtractor] | None = None,
) -> pd.DataFrame:
    """Score one variant with every backbone and write ``results/scores/<variant>.csv``.

    ``manifest_path`` is the data manifest for ``variant == "real"`` (training rows are scored),
    else a generated manifest (``sample_id, image, mask, ...``). ``backbones`` maps config keys to
    specs; ``prototype_paths`` maps the same keys to prototype files. Rows are ordered by backbone
    key then manifest order. With ``features_path`` the samples' backbone features are saved there too
    (:func:`save_features`: ``results/scores/<variant>.features.safetensors``). With ``fidelity_path`` (a
    generated variant's ``results/fidelity/<variant>.csv``) the fidelity guard's columns ``fidelity_dice,
    fidelity_separation, fidelity`` are joined by sample_id (:func:`hardgen.scoring.fidelity.join_fidelity`).
    ``extractors``: backbones already loaded, by config key (the others are loaded one at a time). A missing
    manifest or fidelity table, or a column missing, is a :class:`DataError` naming the file.
    """
    manifest_path = Path(manifest_path)
    what = "data manifest" if variant == "real" else "generated manifest"
    manifest = io.read_csv_table(manifest_path, ("image", "mask"), what)
    missing = sorted(set(backbones) - set(prototype_paths))
    if missing:
        raise ValueError(f"backbones {missing}: no prototype file given")
    tables = []
    features: dict[str, torch.Tensor] = {}
    pairs = real_training_pairs(manifest) if variant == "real" else manifest
    for key in sorted(backbones):
        table, features[key] = score_samples_with_features(pairs, backbones[key], prototype_paths[key], variant, pad,
                                                           batch_size, device, key, resolution,
                                                           backbone=(extractors or {}).get(key))
        log.info("%s/%s: %d samples, mean z %.3f", variant, key, len(table), table["z"].mean())
        tables.append(table)
    if not tables:
        raise ValueError("backbones: at least one backbone is needed to score")
    scores = pd.concat(tables, ignore_index=True)
    if scores.empty:
        raise DataError(f"{manifest_path}: no samples to score for variant {variant!r}")
    if features_path is not None:
        save_features(features_path, variant, tables[0]["sample_id"].tolist(), features)
    if fidelity_path is not None:
        from hardgen.scoring.fidelity import SCORE_FIDELITY_COLUMNS, join_fidelity

        fidelity = io.read_csv_table(fidelity_path, ("sample_id", *SCORE_FIDELITY_COLUMNS), "fidelity table",
                                     dtype={"sample_id": str})
        scores = join_fidelity(scores, fidelity, where=str(fidelity_path))
    io.write_csv(out_path, scores)
    return scores


@dataclass(frozen=True)
class ScoringSetup:
    """What every set of a score job is scored with: the backbones and their prototypes (by config key), the held-out
    backbone of the fidelity guard (``filter.fidelity_backbone``), the crop ``pad``, batch size, device, resolution
    and the backbones already loaded (``extractors``, by config key; the others are loaded when needed)."""

    backbones: Mapping[str, BackboneSpec]
    prototype_paths: Mapping[str, str | Path]
    fidelity_key: str
    pad: int = 10
    batch_size: int = 16
    device: str | torch.device = "cpu"
    resolution: int | None = None
    extractors: Mapping[str, FeatureExtractor] | None = None


@dataclass(frozen=True)
class ScoredSet:
    """One set a score job scores: its manifest and variant, where its scores, fidelity table and features go and, for
    a generated variant, the real-only segmenters' sample losses (by judge name) and the real fidelity reference."""

    manifest_path: str | Path
    variant: str
    out_path: str | Path
    fidelity_out: str | Path
    sample_loss_csvs: Mapping[str, str | Path] | None = None
    reference_csv: str | Path | None = None
    features_path: str | Path | None = None


def score_with_fidelity(setup: ScoringSetup, scored: ScoredSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Workflow entry point (rules ``score``, ``score_variants``): the fidelity guard's table and the scores of one set.

    The held-out backbone ``setup.fidelity_key`` (``filter.fidelity_backbone``) is loaded once and used for both: its
    spatial features of the whole images (the guard) and its pooled features of the mask crops (the scores).
    ``scored.variant == "real"``: ``manifest_path`` is the data manifest; ``fidelity_out`` gets the real training
    images' raw separations (:func:`hardgen.scoring.fidelity.build_reference`, ``results/fidelity/real.csv``: the
    calibration) and the score table no fidelity columns. A generated variant: every sample graded by
    ``sample_loss_csvs`` (the real-only segmenters) and calibrated on ``reference_csv``
    (:func:`hardgen.scoring.fidelity.build_fidelity`, ``results/fidelity/<variant>.csv``), then joined into the score
    table (:func:`score_variant`). ``setup.extractors``: backbones already loaded, by config key (several sets scored in
    one job load them once); the others, the held-out one included, are loaded here. Returns (scores, fidelity table).
    """
    from hardgen.scoring.fidelity import build_fidelity, build_reference

    key, variant, manifest_path = setup.fidelity_key, scored.variant, scored.manifest_path
    if key not in setup.backbones:
        raise ValueError(f"filter.fidelity_backbone: {key!r} is not one of the backbones {sorted(setup.backbones)}")
    extractors = dict(setup.extractors or {})
    fidelity_backbone = (extractors[key] if key in extractors
                         else load_backbone(setup.backbones[key], setup.device, config_key=key))
    if variant == "real":
        fidelity = build_reference(manifest_path, fidelity_backbone, scored.fidelity_out, resolution=setup.resolution,
                                   batch_size=setup.batch_size)
    else:
        if scored.sample_loss_csvs is None or scored.reference_csv is None:
            raise ValueError(f"{variant}: grading generated samples needs the segmenters' sample losses and the "
                             "real images' fidelity reference")
        fidelity = build_fidelity(manifest_path, scored.sample_loss_csvs, scored.reference_csv, fidelity_backbone,
                                  scored.fidelity_out, resolution=setup.resolution, batch_size=setup.batch_size)
    scores = score_variant(manifest_path, setup.backbones, setup.prototype_paths, variant, scored.out_path, setup.pad,
                           setup.batch_size, setup.device, setup.resolution, scored.features_path,
                           fidelity_path=None if variant == "real" else scored.fidelity_out,
                           extractors={**extractors, key: fidelity_backbone})
    return scores, fidelity


def save_features(path: str | Path, variant: str, sample_ids: list[str], features: Mapping[str, torch.Tensor]) -> None:
    """Write the per-sample backbone features of one scored set: ``{backbone key: (N, D) float32}`` (safetensors).

    Rows follow ``sample_ids`` (the score table's order, the same for every backbone); the header metadata holds
    ``variant`` and ``sample_ids`` (JSON). :func:`hardgen.report.gallery.read_features` reads it back without torch.
    """
    for key, tensor in features.items():
        if tensor.ndim != 2 or tensor.shape[0] != len(sample_ids):
            raise ValueError(f"features of backbone {key!r}: shape {tuple(tensor.shape)} for {len(sample_ids)} samples")
    metadata = {"variant": str(variant), "sample_ids": json.dumps([str(s) for s in sample_ids])}
    save_state_dict(path, {k: v.float().contiguous() for k, v in features.items()}, metadata=metadata)
