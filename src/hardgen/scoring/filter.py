"""Synthetic training subsets per policy, ratio and seed (which generated images a segmenter is trained with).

Every synthetic policy at ratio ``r`` (``segment.synthetic_ratios``: synthetic images per real image) trains
with exactly ``N_r = round(r × n_real)`` synthetic images (:func:`synthetic_count`; ``n_real`` = the real
training images), drawn at random (seeded) from its *pool*, which the rule of its registry entry picks from its source
variant's samples (``Policy.pool``, :data:`hardgen.core.registry.POOL_RULES`; :func:`pool`):

- ``real`` (rule ``none``): no synthetic images (empty table; ratio 0; the segmenter uses the real data only);
- ``plain`` / ``hard`` / ``feedback`` / ``mined`` / ``guided`` (rule ``every``): the pool is every generated sample
  of that variant;
- ``hard_band`` (rule ``band``): hard samples whose hardness lies between the ``filter.band`` quantiles of the hard
  variant's hardness distribution — hard, but not so far from the prototype that they are broken;
- ``hard_faithful`` (rule ``fidelity``): hard samples that pass the fidelity guard (``fidelity >=
  filter.min_fidelity``, :mod:`hardgen.scoring.fidelity`): a hard sample that no longer shows its polyp is label
  noise, not hardness.

Since every policy has ``N_r`` images at ratio ``r``, the controls are policies of the benchmark itself:
``hard`` at ratio ``r`` *is* the size-matched uniform random control of ``hard_band`` and of
``hard_faithful`` (same variant, same size, same draw: ``hard_band − hard`` is the effect of *which* hard
samples are kept), and ``plain`` that of ``hard``, ``feedback``, ``mined`` and ``guided`` (the effect of the
generator at equal size, on the same conditions). The former ``hard_random`` and ``random`` policies would duplicate
``hard`` and ``plain`` and are gone (:data:`REMOVED_POLICIES`).

The draw (:func:`draw`) ranks samples by a seeded hash of their sample id (:func:`hardgen.core.io.sample_seed`
with :func:`subset_seed` of the config ``seed`` and the segmenter seed) and keeps the ``N_r`` first of the
pool. So, for one seed: variants share sample ids (one per condition), hence the variant policies
(``plain``, ``hard``, ...) pick the very same conditions (paired controls); a filtered pool keeps the
draw's order (``hard_band`` takes the band samples ``hard`` would rank first); and a larger ratio keeps
every sample of a smaller one (nested subsets). A pool smaller than ``N_r`` is a :class:`ShortPool`: with
``filter.on_short_pool: skip`` (the default) the subset is recorded as infeasible (its pool record says which
policy, ratio and seed, the pool size and the need), its segmenter runs are skipped and the report lists it;
``error`` stops the run.
Subsets are written per policy, ratio and segmenter seed
(``results/subsets/<policy>/ratio-<r>/seed-<s>.csv``, ``r`` as :func:`hardgen.config.validation.ratio_label`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hardgen.config.validation import REMOVED_POLICIES, ratio_label
from hardgen.core import io
from hardgen.core.io import DataError
from hardgen.core.registry import POLICIES as REGISTRY
from hardgen.core.registry import Policy

#: Policies whose pool is every sample of their variant (hardgen.core.registry: pool rule ``every``).
VARIANT_POLICIES: tuple[str, ...] = tuple(p.name for p in REGISTRY.values() if p.pool == "every")
#: Policies whose pool is a filtered part of a variant (hardgen.core.registry: a scored pool rule; :func:`pool`).
HARD_POLICIES: tuple[str, ...] = tuple(p.name for p in REGISTRY.values() if p.scored)
POLICIES: tuple[str, ...] = tuple(REGISTRY)
#: Every synthetic policy draws at random (its subset changes with the seed, and with the ratio's size).
RANDOM_POLICIES: tuple[str, ...] = (*VARIANT_POLICIES, *HARD_POLICIES)
SUBSET_COLUMNS = ["image", "mask", "sample_id", "variant"]

__all__ = ["POLICIES", "REMOVED_POLICIES", "SHORT_POOL_ACTIONS", "SUBSET_COLUMNS", "ShortPool", "build_subsets",
           "draw", "faithful_ids", "hardness", "pool", "pool_record", "ratio_label", "read_pool_record", "real_count",
           "select_subset", "short_pool_message", "subset_seed", "synthetic_count", "write_subset"]


def subset_seed(base_seed: int, segmenter_seed: int) -> int:
    """The seed of a policy's random draw for one segmenter seed: a function of both (config ``seed``).

    Derived through numpy's ``SeedSequence`` (not a sum, so (0, 1) and (1, 0) draw differently).
    """
    for name, value in (("seed", base_seed), ("segment.seeds", segmenter_seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: subset seeds need non-negative integers, got {value!r}")
    return int(np.random.SeedSequence([int(base_seed), int(segmenter_seed)]).generate_state(1, np.uint32)[0])


def synthetic_count(ratio: float, n_real: int) -> int:
    """``N_r = round(ratio × n_real)`` synthetic images (Python's round: halves to even), at least 1."""
    if isinstance(n_real, bool) or not isinstance(n_real, (int, np.integer)) or n_real < 1:
        raise ValueError(f"real training images: need at least one, got {n_real!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.number)) or not float(ratio) > 0:
        raise ValueError(f"segment.synthetic_ratios: ratios must be positive numbers, got {ratio!r}")
    count = round(float(ratio) * int(n_real))
    if count < 1:
        raise ValueError(f"segment.synthetic_ratios: ratio {ratio_label(ratio)} × {n_real} real images rounds to "
                         "0 synthetic images; use a larger ratio")
    return int(count)


def _check_band(band: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in band)
    except (TypeError, ValueError) as err:
        raise ValueError(f"filter.band: expected two quantiles [low, high], got {band!r}") from err
    if not (0.0 <= low < high <= 1.0):
        raise ValueError(f"filter.band: need 0 <= low < high <= 1, got [{low}, {high}]")
    return low, high


def _check_policy(policy: str) -> Policy:
    """The registry entry of ``policy`` (read at call time: the registry is the one declaration)."""
    if policy in REMOVED_POLICIES:
        raise ValueError(f"policy {policy!r}: removed. {REMOVED_POLICIES[policy]}")
    if policy not in REGISTRY:
        raise ValueError(f"policy {policy!r}: unknown (choose from {', '.join(REGISTRY)})")
    return REGISTRY[policy]


def _variant_rows(generated_df: pd.DataFrame, variant: str) -> pd.DataFrame:
    missing = set(SUBSET_COLUMNS) - set(generated_df.columns)
    if missing:
        raise DataError(f"generated manifests: missing columns {sorted(missing)}")
    rows = generated_df[generated_df["variant"] == variant]
    if rows.empty:
        raise DataError(f"generated manifests: no samples of variant {variant!r}")
    if rows["sample_id"].duplicated().any():
        raise DataError(f"generated manifests: duplicate sample_id within variant {variant!r}")
    return rows.assign(sample_id=rows["sample_id"].astype(str))


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


def _band_ids(
    scores_df: pd.DataFrame, generated_df: pd.DataFrame, variant: str, low: float, high: float, score_backbone: str
) -> set[str]:
    """sample_ids of ``variant``'s samples whose hardness lies within the [low, high] quantiles (inclusive)."""
    ids = set(_variant_rows(generated_df, variant)["sample_id"])
    values = hardness(scores_df, variant, score_backbone)
    values.index = values.index.astype(str)
    unscored = sorted(ids - set(values.index))
    if unscored:
        raise DataError(f"score tables: {variant} samples without a score: {unscored[:5]} ({len(unscored)} total)")
    values = values[values.index.isin(ids)]
    lo_value, hi_value = values.quantile(low), values.quantile(high)
    return set(values.index[(values >= lo_value) & (values <= hi_value)])


def faithful_ids(scores_df: pd.DataFrame, generated_df: pd.DataFrame, variant: str, min_fidelity: float) -> set[str]:
    """sample_ids of ``variant``'s samples that pass the fidelity guard (``fidelity >= filter.min_fidelity``).

    The fidelity comes from the score tables (the score rule joins it, :func:`hardgen.scoring.fidelity.join_fidelity`);
    every sample of ``variant`` must have one.
    """
    from hardgen.scoring.fidelity import passes

    if "fidelity" not in scores_df.columns:
        raise DataError("score tables: no 'fidelity' column (the score rule joins results/fidelity/<variant>.csv)")
    ids = set(_variant_rows(generated_df, variant)["sample_id"])
    graded = scores_df[(scores_df["variant"] == variant)].dropna(subset=["fidelity"])
    per_sample = graded.assign(sample_id=graded["sample_id"].astype(str)).groupby("sample_id")["fidelity"]
    if (per_sample.nunique() > 1).any():
        raise DataError(f"score tables: a {variant} sample has two different fidelity values")
    fidelity = per_sample.first()
    ungraded = sorted(ids - set(fidelity.index))
    if ungraded:
        raise DataError(f"score tables: {variant} samples without a fidelity: {ungraded[:5]} ({len(ungraded)} total)")
    fidelity = fidelity[fidelity.index.isin(ids)]
    return set(fidelity.index[passes(fidelity.to_numpy(), min_fidelity)])


def pool(
    policy: str,
    scores_df: pd.DataFrame,
    generated_df: pd.DataFrame,
    band: Sequence[float] = (0.5, 0.95),
    score_backbone: str = "all",
    min_fidelity: float = 0.5,
) -> pd.DataFrame:
    """The samples ``policy`` draws from (columns of the generated manifests), sorted by sample_id: its registry
    entry's rule (``Policy.pool``) applied to its source variant's samples; a rule this function has no code for is
    an error."""
    entry = _check_policy(policy)
    low, high = _check_band(band)
    if entry.pool == "none":
        return pd.DataFrame(columns=SUBSET_COLUMNS)
    rows = _variant_rows(generated_df, entry.source)
    if entry.pool == "band":
        rows = rows[rows["sample_id"].isin(_band_ids(scores_df, generated_df, entry.source, low, high, score_backbone))]
    elif entry.pool == "fidelity":
        rows = rows[rows["sample_id"].isin(faithful_ids(scores_df, generated_df, entry.source, min_fidelity))]
    elif entry.pool != "every":
        raise ValueError(f"policy {policy!r}: pool rule {entry.pool!r} (hardgen.core.registry) has no selection in "
                         "hardgen.scoring.filter.pool")
    return rows.sort_values("sample_id", kind="stable").reset_index(drop=True)


def draw(pool_df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows of ``pool_df`` drawn uniformly without replacement, seeded: the ``n`` lowest
    :func:`hardgen.core.io.sample_seed` (sample_id, ``seed``) keys, so the draw of a sample depends on its id and
    the seed alone (same picks across variants, nested across sizes, order-free). Sorted by sample_id."""
    if n > len(pool_df):
        raise DataError(f"draw: {n} samples asked of a pool of {len(pool_df)}")
    keys = pd.Series([io.sample_seed(str(s), seed) for s in pool_df["sample_id"]], index=pool_df.index)
    order = pool_df.assign(_key=keys, sample_id=pool_df["sample_id"].astype(str)).sort_values(
        ["_key", "sample_id"], kind="stable")
    return order.head(n).drop(columns="_key").sort_values("sample_id", kind="stable").reset_index(drop=True)


def _pool_description(policy: str, band: Sequence[float], min_fidelity: float) -> str:
    entry = REGISTRY[policy]
    if entry.pool == "band":
        return f"{entry.source} samples within filter.band {list(band)}"
    if entry.pool == "fidelity":
        return f"{entry.source} samples with fidelity >= filter.min_fidelity {min_fidelity}"
    return f"every {entry.source} sample"


def short_pool_message(policy: str, ratio: float, n_real: int, need: int, pool_size: int, band: Sequence[float],
                       min_fidelity: float) -> str:
    """Why ``policy`` cannot fill ``ratio``: the need, the pool (what it holds and how it was picked), the knobs."""
    return (f"policy {policy!r} at ratio {ratio_label(ratio)}: needs {need} synthetic images "
            f"(round({ratio_label(ratio)} × {n_real} real)), its pool ({_pool_description(policy, band, min_fidelity)})"
            f" holds {pool_size}. Generate more samples per mask (generation.per_mask), lower "
            "segment.synthetic_ratios, or widen filter.band / lower filter.min_fidelity")


def select_subset(
    policy: str,
    scores_df: pd.DataFrame,
    generated_df: pd.DataFrame,
    ratio: float | None = None,
    n_real: int | None = None,
    band: Sequence[float] = (0.5, 0.95),
    score_backbone: str = "all",
    min_fidelity: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """The synthetic samples a segmenter trains with under ``policy`` at ``ratio`` (``n_real`` real images).

    ``scores_df``: concatenated score tables (sample_id, variant, backbone, distance, z [, fidelity]).
    ``generated_df``: concatenated generated manifests (sample_id, image, mask, condition, variant).
    ``seed``: the draw seed (the workflow passes :func:`subset_seed`). A synthetic policy takes
    :func:`synthetic_count` (ratio, n_real) samples of its :func:`pool` by :func:`draw`; ``real`` takes none
    (its ratio is 0). Returns columns ``image, mask, sample_id, variant``, sorted by sample_id. A pool smaller than
    the need is a :class:`ShortPool` (a :class:`DataError` that carries the pool size and the need).
    """
    if _check_policy(policy).pool == "none":
        if ratio not in (None, 0):
            raise ValueError(f"policy {policy!r}: trains without synthetic images (ratio 0), got ratio {ratio!r}")
        return pd.DataFrame(columns=SUBSET_COLUMNS)
    if ratio is None or n_real is None:
        raise ValueError(f"policy {policy!r}: needs a ratio (segment.synthetic_ratios) and the real image count")
    n = synthetic_count(ratio, n_real)
    candidates = pool(policy, scores_df, generated_df, band, score_backbone, min_fidelity)
    if len(candidates) < n:
        raise ShortPool(short_pool_message(policy, ratio, n_real, n, len(candidates), band, min_fidelity),
                        pool_size=len(candidates), need=n)
    return draw(candidates, n, seed)[SUBSET_COLUMNS]


class ShortPool(DataError):
    """A policy's pool holds fewer samples than its ratio needs (``filter.on_short_pool`` decides what follows)."""

    def __init__(self, message: str, pool_size: int, need: int):
        super().__init__(message)
        self.pool_size, self.need = int(pool_size), int(need)


#: ``filter.on_short_pool``: skip (record the subset as infeasible, its runs are skipped) or error (stop the run).
SHORT_POOL_ACTIONS: tuple[str, ...] = ("skip", "error")


def pool_record(policy: str, ratio: float, segmenter_seed: int, n_real: int, pool_size: int | None, need: int,
                reason: str | None = None) -> dict:
    """The record beside every subset (``results/subsets/<policy>/ratio-<r>/seed-<s>.json``): how large the policy's
    pool was, how many samples the ratio needed, and whether the subset could be filled (``feasible``; when not,
    ``reason`` says why and the subset table is empty: its segmenter runs are skipped)."""
    return {"policy": str(policy), "ratio": float(ratio), "seed": int(segmenter_seed), "real_images": int(n_real),
            "pool": None if pool_size is None else int(pool_size), "need": int(need), "feasible": reason is None,
            "reason": reason}


def read_pool_record(path: str | Path) -> dict:
    """A subset's pool record (:func:`pool_record`, written by rule filter); a missing or malformed one is a
    :class:`DataError` naming the file."""
    return io.read_json_record(path, ("policy", "ratio", "seed", "pool", "need", "feasible"), "subset pool record")


def write_subset(df: pd.DataFrame, path: str | Path) -> None:
    """Write a subset table atomically (columns ``image, mask, sample_id, variant``)."""
    missing = set(SUBSET_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: subset table lacks columns {sorted(missing)}")
    io.write_csv(path, df[SUBSET_COLUMNS])


def real_count(manifest_csv: str | Path) -> int:
    """The number of real training images (rows of split ``train``) in the data manifest."""
    path = Path(manifest_csv)
    manifest = io.read_csv_table(path, ("split",), "data manifest")
    count = int((manifest["split"] == "train").sum())
    if count < 1:
        raise DataError(f"{path}: no training images")
    return count


def build_subsets(
    runs: Sequence[tuple[str, float]],
    score_csvs: Sequence[str | Path],
    generated_csvs: Sequence[str | Path],
    out_paths: Sequence[str | Path],
    n_real: int | None = None,
    band: Sequence[float] = (0.5, 0.95),
    score_backbone: str = "all",
    min_fidelity: float = 0.5,
    seed: int = 0,
    record_paths: Sequence[str | Path] | None = None,
    segmenter_seed: int = 0,
    on_short_pool: str = "error",
) -> list[pd.DataFrame]:
    """Workflow entry point (rule ``filter``): the subsets of several (policy, ratio) pairs of one draw seed.

    The tables are read once; each subset is :func:`select_subset`'s, written to the ``out_paths`` entry of the
    same position, and with ``record_paths`` its :func:`pool_record` beside it (``segmenter_seed``: the seed the
    record names). A pool too short for its ratio (:class:`ShortPool`) stops the job with ``on_short_pool: error``;
    with ``skip`` the subset is written empty, its record says infeasible (pool, need, why) and the other subsets
    are made as usual. Returns the subsets in ``runs`` order.
    """
    if on_short_pool not in SHORT_POOL_ACTIONS:
        raise ValueError(f"filter.on_short_pool: {on_short_pool!r} is not one of {list(SHORT_POOL_ACTIONS)}")
    if len(runs) != len(out_paths) or (record_paths is not None and len(record_paths) != len(runs)):
        raise ValueError(f"filter: {len(runs)} (policy, ratio) pairs for {len(out_paths)} output paths"
                         + ("" if record_paths is None else f" and {len(record_paths)} records"))
    scores, generated = _read_tables(score_csvs, generated_csvs)
    made = []
    for (policy, ratio), out_path in zip(runs, out_paths, strict=True):
        try:
            subset = select_subset(policy, scores.copy(), generated.copy(), ratio, n_real, band, score_backbone,
                                   min_fidelity, seed)
            made.append((subset, None))
        except ShortPool as short:
            if on_short_pool == "error":
                raise
            made.append((pd.DataFrame(columns=SUBSET_COLUMNS), short))
    # written only when every subset of the job is decided (no half-written set on an error)
    for k, ((policy, ratio), out_path) in enumerate(zip(runs, out_paths, strict=True)):
        subset, short = made[k]
        write_subset(subset, out_path)
        if record_paths is not None:
            synthetic = REGISTRY[policy].pool != "none"
            need = synthetic_count(ratio, n_real) if synthetic else 0
            pool_size = short.pool_size if short else None
            if short is None and synthetic:
                pool_size = len(pool(policy, scores, generated, band, score_backbone, min_fidelity))
            io.write_json(record_paths[k], pool_record(policy, ratio, segmenter_seed, n_real or 0, pool_size, need,
                                                       None if short is None else str(short)))
    return [subset for subset, _ in made]


def _read_tables(score_csvs: Sequence[str | Path],
                 generated_csvs: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The score tables and the generated manifests, each concatenated (``sample_id`` read as text)."""

    def read_all(paths: Sequence[str | Path], what: str, columns: list[str]) -> pd.DataFrame:
        # no required columns here: which ones a subset reads depends on its policy
        frames = [io.read_csv_table(path, (), what, dtype={"sample_id": str}) for path in paths]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)

    return (read_all(score_csvs, "score table", ["sample_id", "variant", "backbone", "distance", "z"]),
            read_all(generated_csvs, "generated manifest", SUBSET_COLUMNS))
