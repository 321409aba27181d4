"""How many samples each training mask gets: the generation plan shared by every variant.

``generation.per_mask`` samples per mask (condition) on average, so every variant generates exactly
``per_mask × n_conditions`` samples whatever ``generation.allocation`` says:

* ``uniform``: ``per_mask`` samples for every condition;
* ``hardness``: a share proportional to the real-trained judges' segmentation loss on the condition's real
  image (the harder the mask for a model trained on real data, the more synthetic samples it gets), at
  least one each, rounded by largest remainders so the total is exact.

The plan (rule ``allocate`` -> ``results/generated/plan.csv``) is computed once and read by every variant's
generation jobs, so sample ids and seeds pair across variants. Sample ids: the ``k = 0`` sample of a
condition keeps the condition's id (the ids of a run with one sample per condition are unchanged); the
others are ``<condition id>-k<k>``. Each sample's seed is :func:`hardgen.core.io.sample_seed` of its id, so the
images never depend on the shard count or on the other samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hardgen.core.io import DataError, sample_seed, table_or_csv, write_table

log = logging.getLogger("hardgen.scoring.allocation")

ALLOCATIONS = ("uniform", "hardness")
#: Columns of the plan, in order. ``judge_loss`` is the loss the allocation used (empty for ``uniform``).
PLAN_COLUMNS = ("sample_id", "condition_id", "k", "seed", "judge_loss")


def check_per_mask(per_mask: object) -> int:
    if isinstance(per_mask, bool) or not isinstance(per_mask, (int, np.integer)) or per_mask < 1:
        raise ValueError(f"generation.per_mask must be an integer >= 1, got {per_mask!r}")
    return int(per_mask)


def check_allocation(allocation: object) -> str:
    if allocation not in ALLOCATIONS:
        raise ValueError(f"generation.allocation must be one of {list(ALLOCATIONS)}, got {allocation!r}")
    return str(allocation)


def allocate_counts(losses: Mapping[str, float] | pd.Series, per_mask: int) -> pd.Series:
    """Samples per condition, proportional to ``losses``, at least 1 each, summing to ``per_mask × len(losses)``.

    Quotas ``q_i = total · L_i / Σ L``; conditions whose quota is below 1 get exactly 1 and the rest is
    re-apportioned over the others (repeated until every remaining quota is >= 1); then each keeps
    ``floor(q_i)`` and the leftover samples go to the largest fractional parts (ties: larger loss first,
    then condition id), so the total is exact and a higher loss never gets fewer samples.
    Returns an int Series indexed like ``losses`` (condition id -> count).
    """
    per_mask = check_per_mask(per_mask)
    series = pd.Series(losses, dtype=float)
    if series.empty:
        raise DataError("allocation: no conditions to allocate samples to")
    if series.index.duplicated().any():
        raise DataError(f"allocation: condition {series.index[series.index.duplicated()][0]!r} appears twice")
    bad = series[~np.isfinite(series.to_numpy()) | (series.to_numpy() < 0)]
    if not bad.empty:
        raise DataError(f"allocation: judge loss of condition {bad.index[0]!r} is {bad.iloc[0]!r}; "
                        f"losses must be finite and >= 0")
    if not series.sum() > 0:
        raise DataError("allocation: every judge loss is 0, so 'hardness' cannot rank the masks "
                        "(use generation.allocation: uniform)")
    total = per_mask * len(series)
    fixed = pd.Series(False, index=series.index)
    while True:  # water-filling: pin quotas below 1 at 1, re-apportion the rest
        free = ~fixed
        remaining = total - int(fixed.sum())
        weight = series[free].sum()
        quotas = series[free] * remaining / weight if weight > 0 else pd.Series(0.0, index=series[free].index)
        low = quotas.index[quotas < 1]
        if len(low) == 0:
            break
        fixed[low] = True
    counts = pd.Series(1, index=series.index, dtype=int)
    floors = np.floor(quotas).astype(int)  # a quota of 2.9999999 (rounding) keeps remainder ~1: first in line
    counts[quotas.index] = floors
    leftover = total - int(counts.sum())
    if leftover:
        remainders = (quotas - floors).rename("remainder").to_frame()
        remainders["loss"] = series[quotas.index]
        remainders["id"] = remainders.index.astype(str)
        order = remainders.sort_values(["remainder", "loss", "id"], ascending=[False, False, True]).index
        counts[order[:leftover]] += 1
    if int(counts.sum()) != total or (counts < 1).any():  # pragma: no cover - guards the arithmetic above
        raise AssertionError(f"allocation: counts sum to {int(counts.sum())}, expected {total}")
    return counts


def sample_ids(condition_id: str, count: int) -> list[str]:
    """The ids of a condition's ``count`` samples: the condition id itself, then ``<id>-k1``, ``<id>-k2``, ..."""
    return [condition_id if k == 0 else f"{condition_id}-k{k}" for k in range(count)]


def make_plan(
    condition_ids: Sequence[str],
    per_mask: int,
    allocation: str,
    seed: int,
    losses: Mapping[str, float] | pd.Series | None = None,
) -> pd.DataFrame:
    """The generation plan: one row per sample (``sample_id, condition_id, k, seed, judge_loss``), sorted.

    ``losses`` (condition id -> judge loss) is required for ``hardness`` and must cover every condition;
    ``uniform`` ignores it. Sample ids must be unique across conditions (a clash raises DataError).
    """
    per_mask, allocation = check_per_mask(per_mask), check_allocation(allocation)
    ids = [str(c) for c in condition_ids]
    if not ids:
        raise DataError("allocation: no conditions to plan samples for")
    if len(set(ids)) != len(ids):
        raise DataError("allocation: duplicate condition ids")
    if allocation == "hardness":
        if losses is None:
            raise ValueError("generation.allocation 'hardness' needs the judges' loss per condition")
        losses = pd.Series(losses, dtype=float)
        losses.index = losses.index.astype(str)
        missing = sorted(set(ids) - set(losses.index))
        if missing:
            raise DataError(f"allocation: no judge loss for condition(s) {missing[:5]}")
        losses = losses[ids]
        counts = allocate_counts(losses, per_mask)
    else:
        counts = pd.Series(per_mask, index=ids, dtype=int)
        losses = pd.Series(math.nan, index=ids, dtype=float)
    rows = [
        {"sample_id": sid, "condition_id": cid, "k": k, "seed": sample_seed(sid, seed), "judge_loss": losses[cid]}
        for cid in ids for k, sid in enumerate(sample_ids(cid, int(counts[cid])))
    ]
    plan = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    clash = plan["sample_id"][plan["sample_id"].duplicated()]
    if not clash.empty:
        raise DataError(f"allocation: sample id {clash.iloc[0]!r} is both a condition id and a numbered sample "
                        f"of another condition")
    return plan.sort_values("sample_id").reset_index(drop=True)


def write_plan(plan: pd.DataFrame, path: str | Path) -> None:
    """Write the plan atomically (columns in :data:`PLAN_COLUMNS` order)."""
    write_table(path, plan, PLAN_COLUMNS, "generation plan")


def read_plan(plan: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Read and check a plan (a table from :func:`make_plan` or its CSV); errors name the file."""
    name, table = table_or_csv(plan, "generation plan", dtype={"sample_id": str, "condition_id": str},
                               required_columns=("sample_id", "condition_id", "seed"))
    if table.empty:
        raise DataError(f"{name}: the plan holds no samples")
    duplicated = table["sample_id"][table["sample_id"].duplicated()]
    if not duplicated.empty:
        raise DataError(f"{name}: duplicate sample_id {duplicated.iloc[0]!r}")
    seeds = pd.to_numeric(table["seed"], errors="coerce")
    if seeds.isna().any() or (seeds < 0).any():
        raise DataError(f"{name}: seeds must be non-negative integers")
    return table.astype({"sample_id": str, "condition_id": str, "seed": "int64"})


def condition_losses(conditions: pd.DataFrame, real_losses: pd.Series) -> pd.Series:
    """Judge loss per condition: the loss on the condition's source (real) image.

    ``real_losses`` is indexed by manifest id. A layout condition (a transformed copy of a real mask) has no
    image of its own and takes its source's loss, so a hard polyp's layouts are sampled more as well.
    """
    missing = [c for c in ("sample_id", "source_id") if c not in conditions.columns]
    if missing:
        raise DataError(f"conditions table lacks columns {missing}")
    losses = real_losses.copy()
    losses.index = losses.index.astype(str)
    sources = conditions["source_id"].astype(str)
    unknown = sorted(set(sources) - set(losses.index))
    if unknown:
        raise DataError(f"allocation: no judge loss for the real image of source id(s) {unknown[:5]}")
    return pd.Series(losses[sources].to_numpy(), index=conditions["sample_id"].astype(str).to_numpy(), name="loss")


def real_image_losses(
    manifest: pd.DataFrame,
    judges: Sequence[tuple[object, str | Path, str]],
    size: int,
    device: str | object = "cpu",
    batch_size: int = 8,
) -> pd.Series:
    """Mean per-image structure loss of the real-trained judges on the real training images (index: manifest id).

    ``judges``: ``(SegmenterSpec, weights path, config key)`` per ``segment.archs`` entry; the loss of each
    image is averaged over them (each judge sees the image as in its evaluation: resized to ``size``).
    """
    # torch + smp: only the hardness allocation imports them
    from hardgen.segmentation.build import load_segmenter
    from hardgen.segmentation.measures import sample_losses

    if not judges:
        raise ValueError("generation.allocation 'hardness' needs at least one judge (segment.archs)")
    train = manifest[manifest["split"] == "train"]
    if train.empty:
        raise DataError("manifest has no 'train' rows to allocate samples by")
    pairs = train[["id", "image", "mask"]].rename(columns={"id": "sample_id"}).astype({"sample_id": str})
    per_judge = []
    for spec, weights, key in judges:
        model = load_segmenter(spec, weights, device=device, config_key=key)
        losses = sample_losses(model, pairs, size=size, batch_size=batch_size, device=device)
        log.info("judge %s (%s): mean loss %.4f on %d real images", key, weights, losses["loss"].mean(), len(losses))
        per_judge.append(losses.set_index("sample_id")["loss"])
    return pd.concat(per_judge, axis=1).mean(axis=1).rename("loss")


def plan_summary(plan: pd.DataFrame) -> str:
    """One log line: samples, conditions, and the spread of samples per condition."""
    counts = plan.groupby("condition_id").size()
    return (f"{len(plan)} samples for {len(counts)} conditions "
            f"({counts.min()}-{counts.max()} per condition, mean {counts.mean():.2f})")
