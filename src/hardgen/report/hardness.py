"""Hardness of the generated sets: mean prototype discrepancy per variant and backbone (``hardness.csv``), and
whether it predicts the real-trained segmenters' per-sample loss (``hardness_transfer.csv``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from hardgen.report.tables import (
    VARIANT_ORDER,
    in_display_order,
    partial_spearman,
    read_losses,
    read_scores,
    spearman,
)

log = logging.getLogger(__name__)

TRANSFER_COLUMNS: list[str] = ["backbone", "segmenter", "variant", "spearman", "partial_spearman", "n"]


def hardness_table(score_csvs: Iterable[str | Path] | pd.DataFrame, loss_backbones: Sequence[str]) -> pd.DataFrame:
    """Mean prototype discrepancy per (variant, backbone): ``variant, backbone, mean_discrepancy, n, in_loss``.

    ``mean_discrepancy`` is the mean ``distance`` of the variant's samples to the real prototype
    under that backbone; ``n`` counts the samples with a finite distance. ``in_loss`` says whether
    the backbone's L_dis entered the hard generator's loss (``loss_backbones``, config
    ``hard.loss_backbones``): discrepancy under a backbone outside the loss is the held-out test of
    whether hardness transfers, under one inside it partly the training objective.
    """
    scores = read_scores(score_csvs)
    backbones = set(scores["backbone"].astype(str))
    unknown = sorted(set(map(str, loss_backbones)) - backbones)
    if unknown:
        raise ValueError(f"hard.loss_backbones: {unknown} are not among the scored backbones {sorted(backbones)}")
    table = (
        scores.dropna(subset=["distance"])
        .groupby(["variant", "backbone"])["distance"]
        .agg(mean_discrepancy="mean", n="count")
        .reset_index()
    )
    order = {v: i for i, v in enumerate(in_display_order(table["variant"], VARIANT_ORDER))}
    table = table.sort_values(["variant", "backbone"], key=lambda s: s.map(order) if s.name == "variant" else s)
    table["in_loss"] = table["backbone"].astype(str).isin(set(map(str, loss_backbones)))
    return table.reset_index(drop=True).astype({"n": int, "in_loss": bool})


def hardness_transfer(
    score_csvs: Iterable[str | Path] | pd.DataFrame, sample_loss_csvs: Mapping[str, str | Path]
) -> pd.DataFrame:
    """Does feature-space hardness predict segmenter loss? Spearman per (backbone, segmenter, variant).

    For every variant in the scores, and for ``all`` (every generated sample pooled, i.e. every
    variant except ``real``), the per-sample discrepancy under each backbone is rank-correlated with
    the per-sample loss of each real-trained benchmark segmenter (``sample_loss_csvs[name]``, name
    ``<arch>/seed-<s>``: columns ``sample_id, loss, fg_fraction`` and optionally ``variant``; with
    ``variant`` the join is on both, since generated variants share sample ids). Columns: ``backbone,
    segmenter, variant, spearman, partial_spearman, n`` — ``partial_spearman`` controls for the
    sample's mask foreground fraction (:func:`partial_spearman`: is it hardness, or just small
    polyps?); ``n`` = joined samples; spearman is NaN below 3 samples or for constant inputs.
    """
    scores = read_scores(score_csvs)
    rows = []
    for segmenter, path in sorted(sample_loss_csvs.items()):
        losses = read_losses(segmenter, path)
        keys = [c for c in ("sample_id", "variant") if c in losses.columns]
        joined = scores.merge(losses, on=keys, how="inner").dropna(subset=["distance", "loss", "fg_fraction"])
        if joined.empty:
            log.warning("%s: no sample ids in common with the score tables", path)
        for backbone in sorted(scores["backbone"].unique()):
            per_backbone = joined[joined["backbone"] == backbone]
            groups = {v: per_backbone[per_backbone["variant"] == v] for v in in_display_order(scores["variant"], VARIANT_ORDER)}
            groups["all"] = per_backbone[per_backbone["variant"] != "real"]
            for variant, group in groups.items():
                if group.empty and variant != "all":
                    continue  # e.g. real training images: the segmenters' losses cover generated samples only
                rows.append(
                    {
                        "backbone": backbone,
                        "segmenter": segmenter,
                        "variant": variant,
                        "spearman": spearman(group["distance"], group["loss"]),
                        "partial_spearman": partial_spearman(group["distance"], group["loss"], group["fg_fraction"]),
                        "n": len(group),
                    }
                )
    return pd.DataFrame(rows, columns=TRANSFER_COLUMNS).astype({"spearman": float, "partial_spearman": float,
                                                                "n": int})
