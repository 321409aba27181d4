"""The data-scarcity curve (``data.train_subsets``): every real training-set size's benchmark in one table, and each
policy's score against the number of real training images.

Each size runs the whole workflow on its own nested subset of the real training images (``results/n-<size>/``, the
smaller subsets inside the larger) and writes its own report there; rule ``scarcity`` reads every size's
``benchmark.csv`` and ``runs.csv`` and its subset record (``train_subset.csv``: the size's count of real images) and
writes them as one table each with an ``n_real`` column, the curve's table ``scarcity.csv`` and the plot
``scarcity.png``. The other tables of a report (hardness, transfer, fidelity, mask following, contrasts, ...) stay
per size, under ``results/n-<size>/tables/``: each is computed on its size's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hardgen.config.validation import ratio_label
from hardgen.core.io import DataError, read_csv_table, write_csv
from hardgen.data.manifest import SUBSET_COLUMNS
from hardgen.evaluation.contrasts import (
    BOOTSTRAP_IMAGES,
    LEVEL,
    bootstrap_interval,
    mean_over_testsets,
    read_images,
    t_interval,
)
from hardgen.report.run_records import RUNS_COLUMNS
from hardgen.report.summary import BENCHMARK_COLUMNS, benchmark_summary
from hardgen.report.tables import POLICY_ORDER, in_display_order, save_figure

#: The column naming a row's real training-set size (its count of real training images).
N_REAL = "n_real"
#: Columns of ``scarcity.csv``: per arch, policy, ratio and size, the mean over seeds of the metric's mean over test
#: sets, its 95 % interval and ``method``: ``t_seeds``, Student's t over the seeds; with one seed
#: ``bootstrap_images``, a percentile bootstrap over the test images (as :mod:`hardgen.evaluation.contrasts`), or
#: ``single seed``, no interval (no per-image table, or a test set of it without a defined value); ``undefined``: no
#: seed has a defined mean, so ``seeds`` is 0 and ``mean``, ``ci_low``, ``ci_high`` are NaN. ``seeds`` counts the
#: seeds whose mean is defined (a seed whose mean over the test sets is missing, NaN, is left out).
SCARCITY_COLUMNS: list[str] = ["arch", "policy", "ratio", N_REAL, "metric", "seeds", "mean", "ci_low", "ci_high",
                               "method"]
T_SEEDS = "t_seeds"
SINGLE_SEED = "single seed"
UNDEFINED = "undefined"


def subset_count(record_csv: str | Path) -> int:
    """The number of real training images a size keeps: the selected rows of its ``train_subset.csv``."""
    record = read_csv_table(record_csv, SUBSET_COLUMNS, "training subset record table")
    count = int(record["selected"].astype(str).str.lower().eq("true").sum())
    if count < 1:
        raise DataError(f"{record_csv}: no selected training image")
    return count


def with_n_real(tables: Mapping[str, str | Path], counts: Mapping[str, int], columns: Sequence[str],
                what: str) -> pd.DataFrame:
    """Every size's table (``{label: path}``) in one, ``n_real`` (``counts[label]``) first, sizes in count order."""
    missing = sorted(set(tables) - set(counts))
    if missing:
        raise DataError(f"{what}: no training-set count for sizes {missing}")
    frames = []
    for label in sorted(tables, key=lambda k: counts[k]):
        frame = read_csv_table(tables[label], columns, f"{what} table")
        frame.insert(0, N_REAL, int(counts[label]))
        frames.append(frame)
    if len({counts[k] for k in tables}) != len(tables):
        raise DataError(f"{what}: two sizes of data.train_subsets keep the same number of images {dict(counts)}")
    return pd.concat(frames, ignore_index=True)


#: ``(n_real, arch, policy, ratio, seed)`` of one run of the curve.
CurveKey = tuple[int, str, str, float, int]


def image_interval(images: str | Path, metric: str, testsets: Sequence[str]) -> tuple[float, float] | None:
    """The 95 % percentile bootstrap over test images of one run's ``metric`` mean over ``testsets`` (each test set's
    images resampled within it, :func:`hardgen.evaluation.contrasts.bootstrap_interval`), over the images whose value is defined
    (a missing value, NaN, is left out, as in the test set's own mean); ``(nan, nan)`` when a test set has rows but no
    defined value (the mean over the test sets is undefined); None for a skipped run's empty table. A test set
    without any row is a :class:`DataError` naming the file."""
    table = read_images(images)
    table = table[table["metric"] == metric]
    groups = [table.loc[table["testset"] == t, "value"].to_numpy(float) for t in testsets]
    if not any(len(g) for g in groups):
        return None
    if not all(len(g) for g in groups):
        raise DataError(f"{images}: {metric} lacks test sets {[t for t, g in zip(testsets, groups) if not len(g)]}")
    groups = [g[~np.isnan(g)] for g in groups]
    if not all(len(g) for g in groups):
        return float("nan"), float("nan")
    _, low, high = bootstrap_interval(groups, mean_over_testsets)
    return low, high


def scarcity_table(long: pd.DataFrame, metric: str, testsets: Sequence[str] | None = None,
                   images: Mapping[CurveKey, str | Path] | None = None) -> pd.DataFrame:
    """The curve: per arch, policy, ratio and ``n_real``, the mean over seeds of ``metric``'s mean over the test sets
    (each seed's mean first, as :func:`hardgen.report.summary.benchmark_summary`), with a t-interval over the seeds (two or
    more). With one seed the interval is the bootstrap over that run's test images (:func:`image_interval`) when
    ``images`` holds its per-image table, else none (``method`` says which). Seeds whose mean is missing (NaN) are
    left out; a point with no defined mean is kept, marked ``method`` :data:`UNDEFINED` with ``seeds`` 0 and NaN
    values. ``long`` is the benchmark with ``n_real``; ``testsets`` (``data.testsets``) are the ones the mean is over
    (default: every one but overall)."""
    images = images or {}
    rows = []
    for n_real, frame in long.groupby(N_REAL, sort=True):
        summary = benchmark_summary(frame.drop(columns=N_REAL), metrics=[metric], testsets=testsets)
        names = list(testsets) if testsets is not None else sorted(set(frame["testset"]) - {"overall"})
        for (arch, policy, ratio), runs in summary.groupby(["arch", "policy", "ratio"], sort=False):
            runs = runs.dropna(subset=["mean"])
            means = runs["mean"].to_numpy(dtype=float)
            if len(means) == 0:  # every seed's mean is missing: the point is undefined, and says so
                rows.append([arch, policy, float(ratio), int(n_real), metric, 0, np.nan, np.nan, np.nan, UNDEFINED])
                continue
            if len(means) >= 2:
                mean, low, high = t_interval(means)
                method = T_SEEDS
            else:
                mean, low, high, method = float(means[0]), np.nan, np.nan, SINGLE_SEED
                table = images.get((int(n_real), arch, policy, float(ratio), int(runs["seed"].iloc[0])))
                interval = image_interval(table, metric, names) if table is not None else None
                if interval is not None and np.isfinite(interval).all():
                    (low, high), method = interval, BOOTSTRAP_IMAGES
            rows.append([arch, policy, float(ratio), int(n_real), metric, len(means), mean, low, high, method])
    if not rows:
        raise DataError(f"scarcity curve: no {metric} rows in the benchmark")
    table = pd.DataFrame(rows, columns=SCARCITY_COLUMNS)
    order = {p: i for i, p in enumerate(in_display_order(table["policy"], POLICY_ORDER))}
    return table.sort_values(["arch", "policy", "ratio", N_REAL], key=lambda c: c.map(order) if c.name == "policy"
                             else c, kind="stable").reset_index(drop=True)


def plot_scarcity(table: pd.DataFrame, out_png: str | Path) -> None:
    """One panel per arch: each synthetic policy and ratio a line of its mean against ``n_real`` (log x), the
    real-only segmenter a black dashed line; error bars / the band are the table's interval (none with one seed).
    Undefined points (NaN mean) are left out, never drawn as 0; the line joins the defined ones."""
    if table.empty:
        raise DataError(f"{out_png}: no rows to plot")
    archs = in_display_order(table["arch"], [])
    metric = str(table["metric"].iloc[0])
    sizes = sorted(table[N_REAL].unique())
    figure = Figure(figsize=(5.2 * len(archs), 3.6), layout="constrained")
    axes = figure.subplots(1, len(archs), squeeze=False)[0]
    for ax, arch in zip(axes, archs, strict=True):
        rows = table[table["arch"] == arch]
        runs = rows[["policy", "ratio"]].drop_duplicates().itertuples(index=False)
        for k, (policy, ratio) in enumerate(runs):
            line = rows[(rows["policy"] == policy) & (rows["ratio"] == ratio)].sort_values(N_REAL)
            line = line[np.isfinite(line["mean"].to_numpy(float))]
            if line.empty:
                continue
            xs, ys = line[N_REAL].to_numpy(float), line["mean"].to_numpy(float)
            low, high = line["ci_low"].to_numpy(float), line["ci_high"].to_numpy(float)
            if policy == "real":
                ax.plot(xs, ys, color="black", linestyle="--", marker="s", linewidth=1.4, label="real only")
                if np.isfinite(low).any():
                    ax.fill_between(xs, low, high, where=np.isfinite(low) & np.isfinite(high), color="black",
                                    alpha=0.12)
                continue
            errors = np.vstack([ys - low, high - ys])
            ax.errorbar(xs, ys, yerr=np.where(np.isfinite(errors), errors, 0.0), marker="o", capsize=3,
                        color=f"C{k}", label=f"{policy} ×{ratio_label(ratio)}")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(int(n)) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("real training images (n_real)")
        ax.set_ylabel(f"{metric} (mean over test sets)")
        methods = set(rows["method"])
        interval = (f"{int(LEVEL * 100)} % t-interval over seeds" if T_SEEDS in methods
                    else f"{int(LEVEL * 100)} % bootstrap over test images" if BOOTSTRAP_IMAGES in methods
                    else "one seed: no interval")
        ax.set_title(f"{arch}: {metric} against real training images ({interval})", fontsize=9)
        if ax.get_legend_handles_labels()[0]:  # nothing drawn when every point of the panel is undefined
            ax.legend(fontsize=7)
    save_figure(figure, out_png)


def write_scarcity(benchmarks: Mapping[str, str | Path], runs: Mapping[str, str | Path],
                   records: Mapping[str, str | Path], out: Mapping[str, str | Path], metric: str,
                   testsets: Sequence[str] | None = None,
                   images: Mapping[tuple[str, str, str, float, int], str | Path] | None = None) -> dict[str, pd.DataFrame]:
    """Read every size's ``benchmark.csv``, ``runs.csv`` and subset record (each ``{label: path}``, the labels of
    ``data.train_subsets``) and write ``out["benchmark"]``, ``out["runs"]`` (with ``n_real``), ``out["scarcity"]``
    (:func:`scarcity_table` of ``metric``; ``images``: the per-image tables ``{(label, arch, policy, ratio, seed):
    path}`` of single-seed intervals) and the plot ``out["plot"]``."""
    counts = {label: subset_count(path) for label, path in records.items()}
    keyed = {(counts[label], *rest): path for (label, *rest), path in (images or {}).items()}
    long = with_n_real(benchmarks, counts, BENCHMARK_COLUMNS, "benchmark")
    run_table = with_n_real(runs, counts, RUNS_COLUMNS, "runs")
    curve = scarcity_table(long, metric, testsets, keyed)
    write_csv(out["benchmark"], long)
    write_csv(out["runs"], run_table)
    write_csv(out["scarcity"], curve)
    plot_scarcity(curve, out["plot"])
    return {"benchmark": long, "runs": run_table, "scarcity": curve}
