"""Synthetic training subsets per policy (which generated images a segmenter is trained with).

Policies:
- ``real``: no synthetic images (empty table; the segmenter uses the real data only);
- ``plain`` / ``hard`` / ``feedback``: every generated sample of that variant;
- ``hard_band``: hard samples whose hardness lies between two quantiles of the hard variant's
  hardness distribution — hard, but not so far from the prototype that they are broken;
- ``hard_random``: as many hard samples as ``hard_band`` keeps, drawn uniformly (seeded): the
  size-matched control of ``hard_band`` from the same variant, so ``hard_band − hard_random`` is the
  effect of *which* hard samples are kept, not of how many;
- ``random``: as many plain samples as ``hard_band`` keeps, drawn uniformly (seeded): the
  size-matched control of ``hard_random`` (same size; same draw, see below), so
  ``hard_random − random`` is the effect of the hard generator at equal size.
``plain``, ``hard`` and ``feedback`` are equal-size by construction (one sample per condition).

Random draws follow the segmenter seed: the rule ``filter`` writes one subset per policy and seed
(``results/subsets/<policy>/seed-<s>.csv``) drawn with :func:`subset_seed` of the config ``seed``
and the segmenter seed (deterministic policies give the same table for every seed). ``random`` and
``hard_random`` use the same draw on tables sorted by sample id, and generated variants share sample
ids (one per condition), so for one seed they pick the same conditions: a paired control.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hardgen import io
from hardgen.io import DataError

POLICIES = ("real", "plain", "hard", "feedback", "hard_band", "hard_random", "random")
#: Policies that draw at random (their subset changes with the seed).
RANDOM_POLICIES = ("hard_random", "random")
SUBSET_COLUMNS = ["image", "mask", "sample_id", "variant"]


def subset_seed(base_seed: int, segmenter_seed: int) -> int:
    """The seed of a policy's random draw for one segmenter seed: a function of both (config ``seed``).

    Derived through numpy's ``SeedSequence`` (not a sum, so (0, 1) and (1, 0) draw differently).
    """
    for name, value in (("seed", base_seed), ("segment.seeds", segmenter_seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: subset seeds need non-negative integers, got {value!r}")
    return int(np.random.SeedSequence([int(base_seed), int(segmenter_seed)]).generate_state(1, np.uint32)[0])


def _check_band(band: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in band)
    except (TypeError, ValueError) as err:
        raise ValueError(f"filter.band: expected two quantiles [low, high], got {band!r}") from err
    if not (0.0 <= low < high <= 1.0):
        raise ValueError(f"filter.band: need 0 <= low < high <= 1, got [{low}, {high}]")
    return low, high


def _variant_rows(generated_df: pd.DataFrame, variant: str) -> pd.DataFrame:
    missing = set(SUBSET_COLUMNS) - set(generated_df.columns)
    if missing:
        raise DataError(f"generated manifests: missing columns {sorted(missing)}")
    rows = generated_df[generated_df["variant"] == variant]
    if rows.empty:
        raise DataError(f"generated manifests: no samples of variant {variant!r}")
    if rows["sample_id"].duplicated().any():
        raise DataError(f"generated manifests: duplicate sample_id within variant {variant!r}")
    return rows


def hardness(scores_df: pd.DataFrame, variant: str, score_backbone: str = "all") -> pd.Series:
    """Hardness per sample of ``variant``: z under ``score_backbone``, or the mean z over backbones (``all``).

    Indexed by sample_id. With ``all`` every sample must be scored by every backbone, so the mean
    is always over the same set.
    """
    missing = {"sample_id", "variant", "backbone", "z"} - set(scores_df.columns)
    if missing:
        raise DataError(f"score tables: missing columns {sorted(missing)}")
    scores = scores_df[scores_df["variant"] == variant]
    if scores.empty:
        raise DataError(f"score tables: no scores for variant {variant!r}")
    if score_backbone != "all":
        known = sorted(scores["backbone"].unique())
        if score_backbone not in known:
            raise ValueError(f"filter.score_backbone: {score_backbone!r} is not among the scored backbones {known}")
        scores = scores[scores["backbone"] == score_backbone]
    if scores.duplicated(["sample_id", "backbone"]).any():
        raise DataError(f"score tables: a sample of variant {variant!r} is scored twice by one backbone")
    table = scores.pivot(index="sample_id", columns="backbone", values="z")
    if table.isna().any().any():
        incomplete = table.index[table.isna().any(axis=1)].tolist()
        raise DataError(f"score tables: samples {incomplete[:5]} lack a score for some backbone")
    return table.mean(axis=1).rename("hardness")


def select_subset(
    policy: str,
    scores_df: pd.DataFrame,
    generated_df: pd.DataFrame,
    band: Sequence[float] = (0.5, 0.95),
    score_backbone: str = "all",
    seed: int = 0,
) -> pd.DataFrame:
    """The synthetic samples a segmenter trains with under ``policy``.

    ``scores_df``: concatenated score tables (sample_id, variant, backbone, distance, z).
    ``generated_df``: concatenated generated manifests (sample_id, image, mask, condition, variant).
    ``seed``: the seed of the random draw of ``hard_random`` / ``random`` (the workflow passes
    :func:`subset_seed`); other policies ignore it. Returns columns ``image, mask, sample_id,
    variant``, sorted by sample_id (deterministic for a given seed).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}: unknown (choose from {', '.join(POLICIES)})")
    low, high = _check_band(band)
    if policy == "real":
        return pd.DataFrame(columns=SUBSET_COLUMNS)
    if policy in ("plain", "hard", "feedback"):
        chosen = _variant_rows(generated_df, policy)
    else:
        kept = _hard_band_ids(scores_df, generated_df, low, high, score_backbone)
        if policy == "hard_band":
            hard = _variant_rows(generated_df, "hard")
            chosen = hard[hard["sample_id"].astype(str).isin(kept)]
        else:
            variant = "hard" if policy == "hard_random" else "plain"
            pool = _variant_rows(generated_df, variant).sort_values("sample_id", kind="stable")
            if len(kept) > len(pool):
                raise DataError(
                    f"policy {policy!r}: needs {len(kept)} {variant} samples (the hard_band size), "
                    f"only {len(pool)} generated"
                )
            picks = np.random.default_rng(seed).choice(len(pool), size=len(kept), replace=False)
            chosen = pool.iloc[np.sort(picks)]
    return chosen.sort_values("sample_id", kind="stable")[SUBSET_COLUMNS].reset_index(drop=True)


def _hard_band_ids(
    scores_df: pd.DataFrame, generated_df: pd.DataFrame, low: float, high: float, score_backbone: str
) -> set[str]:
    """sample_ids of hard samples whose hardness lies within the [low, high] quantiles (inclusive)."""
    hard_ids = set(_variant_rows(generated_df, "hard")["sample_id"].astype(str))
    values = hardness(scores_df, "hard", score_backbone)
    values.index = values.index.astype(str)
    unscored = sorted(hard_ids - set(values.index))
    if unscored:
        raise DataError(f"score tables: hard samples without a score: {unscored[:5]} ({len(unscored)} total)")
    values = values[values.index.isin(hard_ids)]
    lo_value, hi_value = values.quantile(low), values.quantile(high)
    return set(values.index[(values >= lo_value) & (values <= hi_value)])


def write_subset(df: pd.DataFrame, path: str | Path) -> None:
    """Write a subset table atomically (columns ``image, mask, sample_id, variant``)."""
    missing = set(SUBSET_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: subset table lacks columns {sorted(missing)}")
    io.write_csv(path, df[SUBSET_COLUMNS])


def build_subset(
    policy: str,
    score_csvs: Sequence[str | Path],
    generated_csvs: Sequence[str | Path],
    out_path: str | Path,
    band: Sequence[float] = (0.5, 0.95),
    score_backbone: str = "all",
    seed: int = 0,
) -> pd.DataFrame:
    """Workflow entry point: read score tables and generated manifests, select, write ``out_path``.

    ``seed`` is the draw seed (:func:`subset_seed` of the config seed and the segmenter seed).
    """

    def read_all(paths: Sequence[str | Path], what: str, columns: list[str]) -> pd.DataFrame:
        frames = []
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: {what} not found")
            frames.append(pd.read_csv(path, dtype={"sample_id": str}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    scores = read_all(score_csvs, "score table", ["sample_id", "variant", "backbone", "distance", "z"])
    generated = read_all(generated_csvs, "generated manifest", SUBSET_COLUMNS)
    subset = select_subset(policy, scores, generated, band, score_backbone, seed)
    write_subset(subset, out_path)
    return subset
