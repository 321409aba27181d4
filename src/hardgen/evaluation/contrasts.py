"""Honest intervals for the benchmark's paired contrasts: which differences can be told from noise?

A contrast is one policy minus a reference at one synthetic ratio, for one arch, paired by seed (the same
initialisation seed and budget on both sides): every policy against ``real`` and against its size-matched control
(the pairs of :func:`hardgen.report.summary.paired_differences`, which benchmark.md tables). Each gets a 95 % interval:

- ``t_seeds`` — with n >= 2 seeds, Student's t-interval over the n per-seed differences:
  ``mean ± t(0.975, n − 1) · sd / sqrt(n)`` (sd with ddof = 1). It measures seed-to-seed variation, the noise that
  decides whether a policy helps.
- ``bootstrap_images`` — with one seed there is no seed spread to measure, so a paired bootstrap over the test
  images: the two runs' per-image scores (``seed-<s>.images.csv`` beside each evaluation table,
  :func:`hardgen.evaluation.metrics.score_testsets_with_images`) are differenced image by image and the images resampled
  with replacement within each test set (:data:`BOOTSTRAP_RESAMPLES` times, seeded by :data:`BOOTSTRAP_SEED`);
  the interval is the 2.5 and 97.5 percentiles of the resampled statistic. It captures test-set sampling noise
  only, not seed-to-seed variation (usually the larger), so it is the narrower of the two.

Missing values are data, not errors: a per-image value may be NaN (e.g. the binary protocol's HD95 where a
prediction or a ground truth is empty, :func:`hardgen.evaluation.metrics.score_binary_image`). The bootstrap pairs only the
images where both runs have a value; a test set without such a pair is left out of that contrast (logged), and a
contrast without any is kept as a row with ``n`` 0 and NaN ``mean_diff`` / ``ci_low`` / ``ci_high`` ("undefined" in
:func:`noise_sentences`). Seeds whose difference is NaN are left out of the t-interval.

Metrics (column ``metric`` of ``results/tables/contrasts.csv``): ``mDice`` / ``mIoU`` are the mean over the test
sets (each test set's score, then their unweighted mean: the paper's "mean mIoU", benchmark.md's ``mean``);
``mDice@overall`` / ``mIoU@overall`` the image-weighted score over all test images pooled (``overall``). ``n`` is
the number of seeds (``t_seeds``) or of paired test images with a value on both sides actually resampled
(``bootstrap_images``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from hardgen.config.validation import ratio_label
from hardgen.core.io import (
    DataError,
    numbers_or_missing,
    read_csv_table,
    require_columns,
)

#: Columns of ``results/tables/contrasts.csv``.
CONTRAST_COLUMNS: list[str] = ["arch", "policy", "ratio", "versus", "metric", "n", "mean_diff", "ci_low", "ci_high",
                               "method"]
#: Columns of a per-image table.
IMAGE_COLUMNS: tuple[str, ...] = ("testset", "image", "metric", "value")
#: Confidence level of every interval.
LEVEL = 0.95
#: Resamples of the paired bootstrap over test images, and its seed (the intervals are reproducible).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: Suffix of the pooled-images form of a metric (benchmark.md's ``overall``).
OVERALL_SUFFIX = "@overall"
T_SEEDS = "t_seeds"
BOOTSTRAP_IMAGES = "bootstrap_images"

#: ``(arch, policy, ratio, seed)`` of one benchmark run.
RunKey = tuple[str, str, float, int]

log = logging.getLogger(__name__)


def t_interval(differences: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student's t-interval of the mean of paired differences (n >= 2, sd with ddof = 1).

    Identical differences give the degenerate interval ``[mean, mean]``.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2 or not np.isfinite(d).all():
        raise ValueError(f"t_interval: needs at least 2 finite differences, got {d.tolist()}")
    mean = float(d.mean())
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def bootstrap_interval(
    groups: Sequence[np.ndarray],
    statistic: Callable[[Sequence[np.ndarray]], np.ndarray | float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> tuple[float, float, float]:
    """``(observed, low, high)``: percentile bootstrap of ``statistic`` over per-image paired differences.

    ``groups``: one array of per-image differences per test set; each resample draws every group's images with
    replacement, keeping its size (test sets are fixed by design), and evaluates ``statistic`` on the resampled
    groups (arrays of shape (resamples, n_group): the statistic reduces the last axis). Seeded: the same input
    gives the same interval.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    if not groups or any(len(g) == 0 or not np.isfinite(g).all() for g in groups):
        raise ValueError("bootstrap_interval: every group needs at least one finite difference")
    if resamples < 1:
        raise ValueError(f"bootstrap_interval: resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    draws = [g[rng.integers(0, len(g), size=(resamples, len(g)))] for g in groups]  # (resamples, n_group) each
    values = np.asarray(statistic(draws), dtype=np.float64)
    low, high = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
    return float(statistic(groups)), float(low), float(high)


def mean_over_testsets(groups: Sequence[np.ndarray]) -> np.ndarray:
    """The unweighted mean over test sets of each test set's mean over images (the last axis; the paper's "mean
    mIoU")."""
    return np.mean([np.asarray(g).mean(axis=-1) for g in groups], axis=0)


def pooled_mean(groups: Sequence[np.ndarray]) -> np.ndarray:
    """The mean over every image pooled (the last axis; benchmark.md's ``overall``)."""
    return np.concatenate([np.asarray(g) for g in groups], axis=-1).mean(axis=-1)


def read_images(path: str | Path) -> pd.DataFrame:
    """A per-image table (:data:`IMAGE_COLUMNS`), checked: numeric or missing (empty / NaN) values, one row per
    (testset, image, metric)."""
    # rule evaluate writes it beside the evaluation table
    table = read_csv_table(path, IMAGE_COLUMNS, "per-image table", dtype={"testset": str, "image": str, "metric": str})
    return check_images(table, str(path))


def check_images(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """The checks of :func:`read_images` on a table in memory (``where`` names it in errors); values as floats.

    A missing value (empty or NaN: a measure undefined for that image) is kept as NaN; a value that is present but
    not a number is a :class:`DataError`.
    """
    require_columns(table, IMAGE_COLUMNS, f"{where}: per-image table")
    values, bad = numbers_or_missing(table["value"])
    if bad.any():
        raise DataError(f"{where}: non-numeric per-image values, e.g. {table.loc[bad, 'value'].iloc[0]!r} "
                        f"({table.loc[bad, 'testset'].iloc[0]} {table.loc[bad, 'image'].iloc[0]})")
    table = table.assign(value=values, testset=table["testset"].astype(str),
                         image=table["image"].astype(str))
    if table.duplicated(["testset", "image", "metric"]).any():
        raise DataError(f"{where}: more than one row for a (testset, image, metric)")
    return table


def _paired_groups(a: pd.DataFrame, b: pd.DataFrame, metric: str, testsets: Sequence[str],
                   where: str) -> list[np.ndarray]:
    """Per test set (in order), the per-image differences a − b of ``metric``, paired by image, over the images where
    both runs have a value. A test set with no such image is left out (logged); every one left out gives ``[]``.

    Errors (:class:`DataError`): the two runs list different images, or neither has a ``metric`` row at all.
    """
    groups, rows, without_pairs = [], False, []
    for testset in testsets:
        left = a[(a["testset"] == testset) & (a["metric"] == metric)].set_index("image")["value"]
        right = b[(b["testset"] == testset) & (b["metric"] == metric)].set_index("image")["value"]
        if left.empty and right.empty:
            continue
        rows = True
        if set(left.index) != set(right.index):
            raise DataError(f"{where}: the two runs' {testset} {metric} images differ "
                            f"({sorted(set(left.index) ^ set(right.index))[:3]} ...): cannot pair them")
        differences = (left - right.reindex(left.index)).dropna()  # NaN where either side is undefined
        if differences.empty:
            without_pairs.append(testset)
        else:
            groups.append(differences.to_numpy())
    if not rows:
        raise DataError(f"{where}: no per-image {metric} rows for the test sets {list(testsets)}")
    if without_pairs:
        log.info("contrast %s, %s: no image of %s has a value in both runs: left out of the bootstrap%s", where,
                 metric, ", ".join(without_pairs), "" if groups else " (no test set left: the contrast is undefined)")
    return groups


def contrast_table(
    differences: pd.DataFrame,
    testsets: Sequence[str],
    images: Mapping[RunKey, str | Path | pd.DataFrame] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Every contrast of ``differences`` with its 95 % interval: :data:`CONTRAST_COLUMNS`.

    ``differences``: :func:`hardgen.report.summary.paired_differences` (``arch, policy, ratio, reference, seed, metric,
    d_mean, d_overall``; the reference is at ratio 0 for ``real``, else at the policy's ratio). Per (arch, policy,
    ratio, reference, metric) two rows: ``<metric>`` (``d_mean``, the mean over test sets) and
    ``<metric>@overall`` (``d_overall``). Seeds whose difference is undefined (NaN) are left out. With >= 2 seeds
    left: :func:`t_interval` (``t_seeds``); otherwise :func:`bootstrap_interval` over the paired per-image
    differences of the one seed left, or, when no seed is left, of the lowest seed (its images may be defined where
    a test-set mean is not) (``bootstrap_images``), which needs ``images`` (``{(arch, policy, ratio, seed):
    per-image table or path}``, ``testsets`` in ``data.testsets`` order), else a :class:`DataError`. The bootstrap
    pairs the images where both runs have a value (``n`` counts them) and leaves out a test set with none; with no
    such pair at all the row is kept, undefined: ``n`` 0 and NaN ``mean_diff``, ``ci_low``, ``ci_high``.
    """
    cache: dict[RunKey, pd.DataFrame] = {}
    paired: dict[tuple[RunKey, RunKey, str], list[np.ndarray]] = {}

    def run_images(key: RunKey) -> pd.DataFrame:
        if key not in cache:
            source = (images or {}).get(key)
            if source is None:
                raise DataError(f"contrasts: one seed for run {key}, so its interval is a bootstrap over test "
                                "images, but its per-image table was not given")
            cache[key] = check_images(source, f"per-image table {key}") if isinstance(source, pd.DataFrame) \
                else read_images(source)
        return cache[key]

    rows = []
    keys = ["arch", "policy", "ratio", "reference", "metric"]
    for (arch, policy, ratio, reference, metric), group in differences.groupby(keys, sort=False):
        for column, name, statistic in (("d_mean", metric, mean_over_testsets),
                                        ("d_overall", metric + OVERALL_SUFFIX, pooled_mean)):
            per_seed = group[["seed", column]].dropna()
            if len(per_seed) >= 2:
                mean, low, high = t_interval(per_seed[column].to_numpy())
                n, method = len(per_seed), T_SEEDS
            else:
                s = int(per_seed["seed"].iloc[0]) if len(per_seed) else int(group["seed"].min())
                reference_ratio = 0.0 if reference == "real" else float(ratio)
                mine, theirs = (arch, policy, float(ratio), s), (arch, reference, reference_ratio, s)
                if (mine, theirs, metric) not in paired:  # d_mean and d_overall resample the same pairs
                    where = f"{arch} {policy} ×{ratio_label(ratio)} − {reference}, seed {s}"
                    paired[(mine, theirs, metric)] = _paired_groups(run_images(mine), run_images(theirs), metric,
                                                                    testsets, where)
                groups = paired[(mine, theirs, metric)]
                if groups:
                    mean, low, high = bootstrap_interval(groups, statistic, resamples, seed)
                else:  # no image has a value in both runs: undefined, kept as a row
                    mean = low = high = float("nan")
                n, method = int(sum(len(g) for g in groups)), BOOTSTRAP_IMAGES
            rows.append({"arch": arch, "policy": policy, "ratio": float(ratio), "versus": reference, "metric": name,
                         "n": n, "mean_diff": mean, "ci_low": low, "ci_high": high, "method": method})
    return pd.DataFrame(rows, columns=CONTRAST_COLUMNS).astype({"ratio": float, "n": int})


def excludes_zero(table: pd.DataFrame) -> pd.Series:
    """Whether each contrast's interval lies entirely above or below 0 (distinguishable from its noise); False for an
    undefined contrast (:func:`undefined`)."""
    return (table["ci_low"] > 0) | (table["ci_high"] < 0)


def undefined(table: pd.DataFrame) -> pd.Series:
    """Whether each contrast is undefined: no seed or image pair with a value on both sides (NaN mean or interval)."""
    return table[["mean_diff", "ci_low", "ci_high"]].isna().any(axis=1)


def primary_rows(table: pd.DataFrame, primary: Mapping[str, object] | None) -> pd.DataFrame:
    """The rows of the primary contrast (``report.primary_contrast``: policy, versus, ratio, metric), one per arch.

    Raises :class:`DataError` when the benchmark has no such contrast (e.g. ``versus`` is neither ``real`` nor
    the policy's size-matched control).
    """
    if not primary:
        return table.iloc[0:0]
    rows = table[(table["policy"] == primary["policy"]) & (table["versus"] == primary["versus"])
                 & np.isclose(table["ratio"], float(primary["ratio"])) & (table["metric"] == primary["metric"])]
    if rows.empty:
        raise DataError(
            f"report.primary_contrast: {primary['policy']} − {primary['versus']} at ratio {primary['ratio']} on "
            f"{primary['metric']} is not a contrast of this benchmark (versus must be real or the policy's "
            "size-matched control, and both policies must have run)")
    return rows


def describe(row: Mapping[str, object] | pd.Series) -> str:
    """``cnn: hard − plain ×1, mIoU +0.012 [−0.003, +0.027] (t over 3 seeds)``; an undefined contrast (NaN) reads
    ``cnn: hard − plain ×1, HD95 undefined (no test image with a value in both runs)``."""
    name = f"{row['arch']}: {row['policy']} − {row['versus']} ×{ratio_label(float(row['ratio']))}, {row['metric']}"
    if any(pd.isna(row[c]) for c in ("mean_diff", "ci_low", "ci_high")):
        return f"{name} undefined (no test image with a value in both runs)"
    how = (f"t over {row['n']} seeds" if row["method"] == T_SEEDS
           else f"bootstrap over {row['n']} test image{'' if row['n'] == 1 else 's'} of one seed")
    return f"{name} {row['mean_diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] ({how})"


#: What an interval of one seed (a paired bootstrap over test images) does not measure.
BOOTSTRAP_CAVEAT = ("With a single seed the interval is a paired bootstrap over test images: it shows how much the "
                    "difference depends on which test images were drawn, not how much it varies between training seeds "
                    "(usually more), so a difference that excludes 0 here may still be seed noise; run more "
                    "segment.seeds for t-intervals over seeds.")


def noise_name(methods: set[str]) -> str:
    """The noise that intervals of ``methods`` measure: ``seed noise`` (all :data:`T_SEEDS`), ``test-image sampling
    noise`` (all :data:`BOOTSTRAP_IMAGES`), else ``noise``."""
    return ("seed noise" if methods == {T_SEEDS} else "test-image sampling noise" if methods == {BOOTSTRAP_IMAGES}
            else "noise")


def noise_sentences(table: pd.DataFrame, metrics: Sequence[str] = ("mDice", "mIoU")) -> list[str]:
    """Plain sentences saying which contrasts (on ``metrics``, the means over test sets) are distinguishable from
    noise (their 95 % interval excludes 0) and which are not, and what noise the intervals measure. Undefined
    contrasts (:func:`undefined`) are listed as such, never counted as distinguishable or not."""
    rows = table[table["metric"].isin(metrics)]
    if rows.empty:
        return ["No contrasts: the benchmark has no `real` runs or controls paired by arch and seed."]
    missing = undefined(rows)
    if missing.all():
        return ["Every contrast is undefined (no test image with a value in both runs): "
                + "; ".join(describe(r) for _, r in rows.iterrows()) + "."]
    undefined_rows, rows = rows[missing], rows[~missing]
    distinct = excludes_zero(rows)
    methods = set(rows["method"])
    noise = noise_name(methods)
    sentences = []
    if distinct.any():
        sentences.append(f"Distinguishable from {noise} (95 % interval excludes 0): "
                         + "; ".join(describe(r) for _, r in rows[distinct].iterrows()) + ".")
    else:
        sentences.append(f"No difference is distinguishable from {noise}: every "
                         f"{'defined ' if len(undefined_rows) else ''}95 % interval contains 0.")
    if (~distinct).any():
        sentences.append("Not distinguishable (interval contains 0): "
                         + "; ".join(describe(r) for _, r in rows[~distinct].iterrows()) + ".")
    if len(undefined_rows):
        sentences.append("Undefined (no test image with a value in both runs, n = 0): "
                         + "; ".join(describe(r) for _, r in undefined_rows.iterrows()) + ".")
    if BOOTSTRAP_IMAGES in methods:
        sentences.append(BOOTSTRAP_CAVEAT)
    return sentences
