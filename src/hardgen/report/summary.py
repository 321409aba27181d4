"""The segmentation benchmark's scores: the evaluation tables in one long table (``benchmark.csv``), each run's
mean over test sets, and the paired differences of every policy against ``real`` and its size-matched control."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hardgen.config.validation import ratio_label
from hardgen.core import registry
from hardgen.core.io import DataError, numbers_or_missing, read_csv_table
from hardgen.report.tables import in_display_order

#: Metric names written by the evaluate rule (``hardgen.evaluation.metrics``).
METRICS: tuple[str, ...] = ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")

#: The ``testset`` of the image-weighted score over every test image pooled (ArSDM's "overall").
OVERALL = "overall"

#: Metrics shown in the markdown benchmark (the paper's headline metrics).
MARKDOWN_METRICS: tuple[str, ...] = ("mDice", "mIoU")


BENCHMARK_COLUMNS: list[str] = ["arch", "policy", "ratio", "seed", "testset", "metric", "value"]
EVAL_COLUMNS: tuple[str, ...] = ("testset", "metric", "value")
#: Suffix of the per-image table beside each evaluation table (``seed-<s>.images.csv``, hardgen.core.layout's eval_images).
IMAGES_SUFFIX = ".images.csv"

#: ``(arch, policy, ratio, seed)`` of one benchmark run (ratio: synthetic images per real image; real: 0).
EvalKey = tuple[str, str, float, int]


def eval_mapping(eval_csvs: Mapping[EvalKey, str | Path]) -> dict[EvalKey, Path]:
    """``{(arch, policy, ratio, seed): path}`` with typed keys; keyed by the caller, never parsed back from a path."""
    if not isinstance(eval_csvs, Mapping):
        raise TypeError("evaluation tables: pass {(arch, policy, ratio, seed): path} (keys are not read off paths)")
    return {(str(a), str(p), float(r), int(s)): Path(v) for (a, p, r, s), v in eval_csvs.items()}


def benchmark_long(eval_csvs: Mapping[EvalKey, str | Path],
                   skipped: Iterable[EvalKey] = ()) -> pd.DataFrame:
    """The evaluation tables in one long table, one row per (arch, policy, ratio, seed, testset, metric).

    ``eval_csvs`` maps ``(arch, policy, ratio, seed)`` to an evaluation CSV (``ratio``: synthetic images per real image,
    ``segment.synthetic_ratios``; the real policy is 0). Each CSV holds exactly the columns ``testset,
    metric, value``: one toolbox score per test set and metric (no per-image rows), including the
    rows of testset :data:`OVERALL` (image-weighted over every test image pooled). Values are taken
    as they are; a missing one (empty or NaN: a measure the data leaves undefined, e.g. the binary protocol's HD95
    of a test set whose every prediction or ground truth is empty) stays NaN, a value that is not a number is a
    :class:`DataError` naming the file. Returns exactly the columns ``arch, policy, ratio, seed, testset, metric,
    value``.
    ``skipped``: the runs skipped for an infeasible subset, whose tables are header-only (any other empty table is
    an error).
    """
    skipped_runs = {(str(a), str(p), float(r), int(s)) for a, p, r, s in skipped}
    frames = []
    for (arch, policy, ratio, seed), path in sorted(eval_mapping(eval_csvs).items()):
        table = read_csv_table(path, EVAL_COLUMNS, "evaluation table")
        extra = [c for c in table.columns if c not in EVAL_COLUMNS]
        if extra:
            raise DataError(
                f"{path}: evaluation table must have exactly the columns {list(EVAL_COLUMNS)} "
                f"(one score per test set and metric), found extra {extra}"
            )
        if table.empty:
            if (arch, policy, ratio, seed) in skipped_runs:  # an infeasible subset's run: no maps, no scores
                continue
            raise DataError(f"{path}: evaluation table has no rows")
        values, bad = numbers_or_missing(table["value"])
        if bad.any():
            bad = table.loc[bad].iloc[0]
            raise DataError(f"{path}: non-numeric entry {bad['value']!r} in column 'value' "
                            f"(testset {bad['testset']}, metric {bad['metric']})")
        duplicated = table.duplicated(["testset", "metric"])
        if duplicated.any():
            first = table.loc[duplicated, ["testset", "metric"]].iloc[0].tolist()
            raise DataError(f"{path}: more than one row for (testset, metric) = {first}")
        frames.append(table.assign(value=values, arch=arch, policy=policy, ratio=ratio, seed=seed))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("value", "ratio") else object)
                             for c in BENCHMARK_COLUMNS})
    long = pd.concat(frames, ignore_index=True)[BENCHMARK_COLUMNS]
    long = long.astype({"testset": str, "metric": str, "ratio": float, "seed": int, "value": float})
    return long.sort_values(["arch", "policy", "ratio", "seed", "testset", "metric"],
                            kind="stable").reset_index(drop=True)


def benchmark_summary(long_df: pd.DataFrame, metrics: Sequence[str] = MARKDOWN_METRICS,
                      testsets: Sequence[str] | None = None) -> pd.DataFrame:
    """Per (arch, policy, ratio, seed, metric): each test set's score, ``mean`` and ``overall``.

    ``mean`` is the unweighted mean over the test sets (every testset except :data:`OVERALL`), taken
    per seed first (the paper averages the test-set scores, not the images), so the spread across
    seeds is the spread of that mean; NaN when a test set is missing for that seed or its value is NaN (undefined,
    e.g. the binary protocol's HD95 of a test set with no defined image), never a mean over the other test sets.
    ``overall`` is the evaluation's image-weighted score over all test images pooled (NaN when not evaluated or
    undefined). Every (run, metric) and test set of ``long_df`` keeps its row and column, NaN values included.
    Test-set columns follow ``testsets`` (``data.testsets``; others after them alphabetically).
    """
    subset = long_df[long_df["metric"].isin(metrics)]
    # not pivot_table: it drops a test set (or a run) whose values are all NaN, which would silently take the mean
    # over the other test sets
    wide = (subset.groupby(["arch", "policy", "ratio", "seed", "metric", "testset"], sort=True)["value"].first()
            .unstack("testset"))
    testsets = in_display_order([t for t in wide.columns if t != OVERALL], testsets or ())
    overall = wide[OVERALL] if OVERALL in wide.columns else pd.Series(np.nan, index=wide.index)
    wide = wide[testsets].copy()
    wide["mean"] = wide.mean(axis=1, skipna=False)
    wide["overall"] = overall
    return wide.reset_index()


def paired_differences(long_df: pd.DataFrame, metrics: Sequence[str] = MARKDOWN_METRICS,
                       testsets: Sequence[str] | None = None) -> pd.DataFrame:
    """Per seed and ratio, each policy minus ``real`` and minus its size-matched control (its registry entry's
    ``control``, :class:`hardgen.core.registry.Policy`: ``hard_band − hard`` / ``hard_faithful − hard``, which hard
    samples are kept; ``hard − plain``, which generator).

    Pairs share arch and seed (the same initialisation seed and iteration budget), so the seed-to-seed
    spread of the difference is what decides whether a policy helps. A policy at ratio ``r`` is compared
    with its control at the same ratio (the same number of synthetic images) and with ``real`` (ratio 0).
    Columns ``arch, policy, ratio, reference, seed, metric, d_mean, d_overall`` (differences of
    :func:`benchmark_summary`'s ``mean`` and ``overall``); seeds missing on either side are left out.
    """
    summary = benchmark_summary(long_df, metrics, testsets).set_index(["arch", "policy", "ratio", "seed", "metric"])
    columns = ["arch", "policy", "ratio", "reference", "seed", "metric", "d_mean", "d_overall"]
    rows = []
    for (arch, policy, ratio, seed, metric), row in summary.iterrows():
        references = [] if policy == "real" else [("real", 0.0)]
        control = registry.policy(policy).control
        if control is not None:
            references.append((control, ratio))
        for reference, reference_ratio in references:
            key = (arch, reference, reference_ratio, seed, metric)
            if key not in summary.index:
                continue
            ref = summary.loc[key]
            rows.append({"arch": arch, "policy": policy, "ratio": ratio, "reference": reference, "seed": seed,
                         "metric": metric, "d_mean": row["mean"] - ref["mean"],
                         "d_overall": row["overall"] - ref["overall"]})
    return pd.DataFrame(rows, columns=columns).astype({"ratio": float})


def run_label(policy: str, ratio: float) -> str:
    """A run's label in tables and plots: ``real``, else ``<policy> ×<ratio>``."""
    return policy if policy == "real" else f"{policy} ×{ratio_label(ratio)}"
