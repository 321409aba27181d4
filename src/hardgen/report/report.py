"""Tables and plots of a hardgen run: segmentation benchmark, hardness of generated sets, sample grids.

Everything here reads the CSV artifacts of earlier stages (see docs/architecture.md) and writes
tables under ``results/tables`` and PNGs under ``results/plots``, atomically. Plots use matplotlib's
object API (``Figure`` + Agg canvas) so no global pyplot state or display is involved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hardgen.config.validation import ratio_label
from hardgen.core.io import (
    DataError,
    numbers_or_missing,
    read_gray,
    read_rgb,
    write_csv,
    write_text,
)
from hardgen.evaluation import contrasts as contrast_lib
from hardgen.evaluation import reproduction as repro
from hardgen.evaluation.metrics import HD95_UNDEFINED, N_IMAGES
from hardgen.report import gallery, transfer
from hardgen.report.run_text import (
    RunDescription,
    protocol_paragraph,
    run_paragraph,
    undefined_notes,
)
from hardgen.report.tables import (  # shared with hardgen.report.transfer and hardgen.report.gallery, which import them from there
    POLICY_ORDER,
    VARIANT_ORDER,
    partial_spearman,
)
from hardgen.report.tables import ordered as _ordered
from hardgen.report.tables import read_losses as _read_losses
from hardgen.report.tables import read_scores as _read_scores
from hardgen.report.tables import read_table as _read_table
from hardgen.report.tables import save_figure as _save_figure
from hardgen.report.tables import spearman as _spearman

log = logging.getLogger(__name__)

#: Metric names written by the evaluate rule (``hardgen.evaluation.metrics``).
METRICS: tuple[str, ...] = ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")

#: The ``testset`` of the image-weighted score over every test image pooled (ArSDM's "overall").
OVERALL = "overall"

#: Metrics shown in the markdown benchmark (the paper's headline metrics).
MARKDOWN_METRICS: tuple[str, ...] = ("mDice", "mIoU")


#: Size-matched controls: ``policy -> control``, compared at the same ratio (every synthetic policy trains with
#: round(ratio × real images) synthetic images, drawn with the same seeded draw, :mod:`hardgen.scoring.filter`).
#: ``hard_band − hard`` / ``hard_faithful − hard``: which hard samples are kept (same variant, same size, a
#: selection vs the uniform draw); ``hard − plain`` (and feedback, mined, guided): which generator (same size,
#: the same conditions). Every policy is also compared with ``real`` (ratio 0).
CONTROLS: dict[str, str] = {"hard_band": "hard", "hard_faithful": "hard", "hard": "plain", "feedback": "plain",
                            "mined": "plain", "guided": "plain"}

BENCHMARK_COLUMNS: list[str] = ["arch", "policy", "ratio", "seed", "testset", "metric", "value"]
EVAL_COLUMNS: tuple[str, ...] = ("testset", "metric", "value")
RUNS_COLUMNS: list[str] = ["arch", "policy", "ratio", "seed", "real_images", "synthetic_images", "iterations",
                           "images_seen"]
#: The training recipe of each run (segment.RECIPE_FIELDS), appended to runs.csv when the records carry it.
RUNS_RECIPE_COLUMNS: list[str] = ["optimizer", "learning_rate", "weight_decay", "lr_decay_at", "lr_decay_factor",
                                  "multi_scale", "grad_clip", "augment"]
TRANSFER_COLUMNS: list[str] = ["backbone", "segmenter", "variant", "spearman", "partial_spearman", "n"]

#: Suffix of the per-image table beside each evaluation table (``seed-<s>.images.csv``, hardgen.core.layout's eval_images).
IMAGES_SUFFIX = ".images.csv"

#: ``(arch, policy, ratio, seed)`` of one benchmark run (ratio: synthetic images per real image; real: 0).
EvalKey = tuple[str, str, float, int]


# ----------------------------------------------------------------------------------------- reading


def _eval_mapping(eval_csvs: Mapping[EvalKey, str | Path]) -> dict[EvalKey, Path]:
    # keyed by the caller (the workflow: each run record's keys), never parsed back from a path
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
    for (arch, policy, ratio, seed), path in sorted(_eval_mapping(eval_csvs).items()):
        table = _read_table(path, EVAL_COLUMNS, "evaluation")
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


# -------------------------------------------------------------------------------------- benchmark


def _mean_sd(values: pd.Series, signed: bool = False) -> str:
    """``mean ± sd`` (sample sd, ddof=1) over seeds (``values``: one per seed); a single seed shows the mean alone.
    ``signed`` writes the mean with its sign (a paired difference).

    Missing values (NaN: undefined for that seed) are left out, and the cell says over how many of the seeds it is
    (``0.512 ± 0.020 (2 of 3 seeds)``); with no value at all it is ``–``, never 0."""
    total = len(values)
    values = values.dropna()
    if values.empty:
        return "–"
    mean = f"{values.mean():{'+' if signed else ''}.3f}"
    cell = mean if len(values) == 1 else f"{mean} ± {values.std(ddof=1):.3f}"
    return cell if len(values) == total else f"{cell} ({len(values)} of {total} seeds)"


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
    testsets = _ordered([t for t in wide.columns if t != OVERALL], testsets or ())
    overall = wide[OVERALL] if OVERALL in wide.columns else pd.Series(np.nan, index=wide.index)
    wide = wide[testsets].copy()
    wide["mean"] = wide.mean(axis=1, skipna=False)
    wide["overall"] = overall
    return wide.reset_index()


def paired_differences(long_df: pd.DataFrame, metrics: Sequence[str] = MARKDOWN_METRICS,
                       testsets: Sequence[str] | None = None) -> pd.DataFrame:
    """Per seed and ratio, each policy minus ``real`` and minus its size-matched control (:data:`CONTROLS`).

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
        if policy in CONTROLS:
            references.append((CONTROLS[policy], ratio))
        for reference, reference_ratio in references:
            key = (arch, reference, reference_ratio, seed, metric)
            if key not in summary.index:
                continue
            ref = summary.loc[key]
            rows.append({"arch": arch, "policy": policy, "ratio": ratio, "reference": reference, "seed": seed,
                         "metric": metric, "d_mean": row["mean"] - ref["mean"],
                         "d_overall": row["overall"] - ref["overall"]})
    return pd.DataFrame(rows, columns=columns).astype({"ratio": float})


DEMO_NOTE = (
    "**Demo run: these numbers are noise by design.** It trains tiny segmenters for a few iterations at a small "
    "size, with samples of a tiny diffusion model pre-trained for minutes on procedural polyp-like images (the "
    "demo's data, or a handful of your own images in a rehearsal); the tables show that every stage runs end to "
    "end, not whether hard samples help."
)


def _budget_lines(runs_df: pd.DataFrame) -> list[str]:
    """One line per arch: iterations, batch and images seen per run, and the subset sizes in play."""
    lines = []
    for arch, group in runs_df.groupby("arch", sort=True):
        iterations = sorted(group["iterations"].unique())
        seen = sorted(group["images_seen"].unique())
        synthetic = group.groupby(["policy", "ratio"])["synthetic_images"].agg(["min", "max"])
        sizes = ", ".join(
            f"{p} ×{ratio_label(r)} {int(synthetic.at[(p, r), 'min'])}"
            + (f"–{int(synthetic.at[(p, r), 'max'])}" if synthetic.at[(p, r), "min"] != synthetic.at[(p, r), "max"]
               else "")
            for p in _ordered(synthetic.index.get_level_values("policy"), POLICY_ORDER)
            for r in sorted(synthetic.loc[p].index)
        )
        lines.append(
            f"- {arch}: {', '.join(map(str, iterations))} iterations, {', '.join(map(str, seen))} images seen per "
            f"run; real images {', '.join(map(str, sorted(group['real_images'].unique())))}; "
            f"synthetic images per policy: {sizes}"
        )
    return lines


def _anchor_lines(anchors: pd.DataFrame, testsets: Sequence[str]) -> list[str]:
    """The published anchors on the run's test sets (mDice / mIoU per cell, ``mean`` where a model has every test
    set), then the published headlines (testset ``mean`` rows)."""
    shown = [t for t in testsets if t in set(anchors["testset"])]
    lines = ["## Published anchors (other models trained on real data only; mDice / mIoU)", ""]
    models = list(dict.fromkeys(anchors.loc[anchors["testset"].isin(shown), "model"]))
    if not models:
        lines += [f"The anchors file has no values for the test sets {', '.join(testsets)}.", ""]
    else:
        values = anchors.set_index(["model", "testset", "metric"])["value"]
        means = repro.published_means(anchors, shown).set_index(["model", "metric"])["mean"]

        def cell(get: Callable[[str], float | None]) -> str:
            parts = [get(m) for m in MARKDOWN_METRICS]
            return " / ".join("–" if v is None or not np.isfinite(v) else f"{v:.3f}" for v in parts)

        lines.append("| model | " + " | ".join(shown) + " | mean |")
        lines.append("|---|" + "|".join(["---:"] * (len(shown) + 1)) + "|")
        for model in models:
            cells = [cell(lambda m, t=t: values.get((model, t, m))) for t in shown]
            cells.append(cell(lambda m: means.get((model, m))))
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        missing = [t for t in testsets if t not in shown]
        lines += ["", f"`mean`: over the {len(shown)} test sets shown, where a model has all of them."
                  + (f" No anchors for {', '.join(missing)}." if missing else ""), ""]
    headlines = anchors[anchors["testset"] == repro.MEAN]
    for _, row in headlines.iterrows():
        lines.append(f"Published headline: {row['model']}, {row['value'] * 100:.2f} % mean {row['metric']} over "
                     "its paper's test sets.")
    if len(headlines):
        lines.append("")
    return lines


def _interval(row: Mapping[str, object] | pd.Series) -> str:
    if pd.isna(row["ci_low"]) or pd.isna(row["ci_high"]):
        return "undefined"  # a contrast without a pair of defined values (contrasts.csv: n 0, NaN)
    return f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def hd95_undefined_lines(long_df: pd.DataFrame) -> list[str]:
    """A sentence and a table of the runs (evaluation tables) where HD95 is undefined for some test images (the binary
    protocol's count rows ``HD95_undefined`` and ``n_images``, :data:`hardgen.evaluation.metrics.BINARY_COUNTS`, summed over the
    test sets), in the tables' order: ``| cnn/real | 0 | 5 | 7 | missed |`` (run, seed, undefined, images, the test
    sets where none is defined, whose HD95 is NaN). One row per run keeps a benchmark of many runs readable. Nothing
    for tables without these rows (the polyp toolbox) or whose every HD95 is defined."""
    return _hd95_table(_hd95_undefined_rows(long_df))


def _hd95_table(rows: list[str]) -> list[str]:
    """The sentence and table of :func:`hd95_undefined_lines` around its ``rows``; nothing without rows."""
    if not rows:
        return []
    return ["HD95 is undefined where a prediction or its ground truth is empty (the binary protocol): each HD95 mean "
            "is over the images where it is defined, and NaN for a test set where none is. "
            f"{len(rows)} run{'s have' if len(rows) != 1 else ' has'} undefined HD95s:", "",
            "| run | seed | HD95 undefined | test images | test sets with none defined (NaN) |",
            "|---|---:|---:|---:|---|", *rows]


def _hd95_undefined_rows(long_df: pd.DataFrame) -> list[str]:
    """The table rows of :func:`hd95_undefined_lines`, one per run with an undefined HD95."""
    counts = long_df[long_df["metric"].isin([HD95_UNDEFINED, N_IMAGES]) & (long_df["testset"] != OVERALL)]
    if counts.empty:
        return []
    per_testset = counts.pivot_table(index=["arch", "policy", "ratio", "seed", "testset"], columns="metric",
                                     values="value", aggfunc="first").reindex(columns=[HD95_UNDEFINED, N_IMAGES])
    rows = []
    for arch in _ordered(per_testset.index.get_level_values("arch"), []):
        mine = per_testset.xs(arch, level="arch")
        for policy in _ordered(mine.index.get_level_values("policy"), POLICY_ORDER):
            for (ratio, seed), run in mine.xs(policy, level="policy").groupby(level=["ratio", "seed"], sort=True):
                undefined, images = run[HD95_UNDEFINED].sum(min_count=1), run[N_IMAGES].sum(min_count=1)
                if not undefined > 0:  # NaN or 0: every HD95 defined
                    continue
                none = sorted(run.index.get_level_values("testset")[run[HD95_UNDEFINED] == run[N_IMAGES]])
                rows.append(f"| {arch}/{_run_label(policy, ratio)} | {seed} | {int(undefined)} | "
                            f"{int(images) if np.isfinite(images) else '–'} | {', '.join(none) or '–'} |")
    return rows


def benchmark_markdown(
    long_df: pd.DataFrame,
    runs_df: pd.DataFrame | None = None,
    demo: bool = False,
    fidelity_df: pd.DataFrame | None = None,
    *,
    testsets: Sequence[str] | None = None,
    anchors: pd.DataFrame | None = None,
    reproduction: pd.DataFrame | None = None,
    published: Mapping[str, str | None] | None = None,
    tolerance: float = repro.DEFAULT_TOLERANCE,
    contrasts: pd.DataFrame | None = None,
    primary: Mapping[str, object] | None = None,
    infeasible_df: pd.DataFrame | None = None,
    run: RunDescription | None = None,
    protocol: str = "polyp_toolbox",
    notes: Sequence[str] = (),
    mask_following: Sequence[str] = (),
) -> str:
    """A markdown report of the benchmark.

    It opens with one sentence per arch of ``published`` (``{arch: anchors model or None}``): whether its
    real-only baseline reproduces the published one (``reproduction``, :func:`hardgen.evaluation.reproduction.reproduction_table`,
    within ``tolerance``). Then, with ``contrasts`` (:func:`hardgen.evaluation.contrasts.contrast_table`), the primary contrast
    (``primary``: ``report.primary_contrast``) with its 95 % interval and sentences saying which differences are
    distinguishable from noise. Per metric (mDice, mIoU): a table of rows arch × policy × ratio with each test set
    (``testsets``: ``data.testsets`` order), ``mean`` (over test sets, per seed: the paper's headline) and
    ``overall`` (image-weighted, pooled); then the paired differences per seed against ``real`` and against the
    size-matched control at the same ratio (:data:`CONTROLS`) with their intervals; then the training budget (from
    ``runs_df``, :func:`runs_table`), what the fidelity guard rejects per variant (``fidelity_df``,
    :func:`hardgen.scoring.fidelity.fidelity_summary`), the published ``anchors`` (:func:`hardgen.evaluation.reproduction.load_anchors`)
    and the protocol paragraph (:func:`hardgen.report.run_text.protocol_paragraph` of ``protocol``, ``evaluate.protocol``;
    ``run.protocol`` when ``run`` is given). With ``run`` (:class:`hardgen.report.run_text.RunDescription`) it opens with a
    paragraph on what was run (dataset, test sets, generation, variants, policies). With ``demo`` a note says the
    numbers are noise by design. ``notes``: sentences on the measures that this data leaves undefined (rows marked
    in their tables, :func:`undefined_notes`), under their own heading. ``mask_following``: the sentences of
    :func:`hardgen.scoring.mask_following.mask_following_sentences` (do the samples follow their masks, by which measure).

    Cells are ``mean ± sd`` over seeds with the sample standard deviation (ddof=1); with a single
    seed the sd is undefined and the cell shows the mean alone. Values are fractions (0–1), like the
    published anchors.
    """
    missing = [c for c in BENCHMARK_COLUMNS if c not in long_df.columns]
    if missing:
        raise DataError(f"benchmark table lacks columns {missing}")
    testsets = list(testsets) if testsets is not None else sorted(set(long_df["testset"]) - {OVERALL})
    lines = ["# Segmentation benchmark", ""]
    if run is not None:
        protocol = run.protocol
        lines += [run_paragraph(run), ""]
    if published is not None:
        table = reproduction if reproduction is not None else pd.DataFrame(columns=repro.REPRODUCTION_COLUMNS)
        lines += [" ".join(repro.reproduction_sentences(table, published, tolerance)), ""]
    if demo:
        lines += [DEMO_NOTE, ""]
    lines += infeasible_lines(infeasible_df)
    interval_of: dict[tuple, pd.Series] = {}
    if contrasts is not None:
        for _, row in contrasts.iterrows():
            interval_of[(row["arch"], row["policy"], float(row["ratio"]), row["versus"], row["metric"])] = row
        if primary:
            lines += ["## Primary contrast", ""]
            lines.append(f"The question this run asks: `{primary['policy']}` − `{primary['versus']}` at ratio "
                         f"{ratio_label(float(primary['ratio']))}, {primary['metric']} as the mean over the test "
                         "sets, paired by arch and seed (`report.primary_contrast`).")
            lines.append("")
            lines.append("| arch | n | method | Δ | 95 % interval | excludes 0 |")
            lines.append("|---|---:|---|---:|---|---|")
            for _, row in contrast_lib.primary_rows(contrasts, primary).iterrows():
                lines.append(f"| {row['arch']} | {row['n']} | {row['method']} | {row['mean_diff']:+.3f} | "
                             f"{_interval(row)} | {'yes' if contrast_lib.excludes_zero(row.to_frame().T).iloc[0] else 'no'} |")
            lines.append("")
        lines += ["## Which differences can be told from noise?", ""]
        lines += [" ".join(contrast_lib.noise_sentences(contrasts, MARKDOWN_METRICS)), ""]
    summary = benchmark_summary(long_df, testsets=testsets)
    n_seeds = long_df.groupby(["arch", "policy", "ratio"])["seed"].nunique()
    for metric in MARKDOWN_METRICS:
        rows = summary[summary["metric"] == metric]
        lines += [f"## {metric}", ""]
        if rows.empty:
            lines += [f"No {metric} rows in the evaluation tables.", ""]
            continue
        columns = _ordered([t for t in set(long_df["testset"]) if t != OVERALL and t in rows.columns], testsets)
        header = ["arch", "policy", "ratio", "seeds", *columns, "mean", "overall"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(columns) + 4)) + "|")
        for arch in _ordered(rows["arch"], []):
            for policy in _ordered(rows.loc[rows["arch"] == arch, "policy"], POLICY_ORDER):
                per_policy = rows[(rows["arch"] == arch) & (rows["policy"] == policy)]
                for ratio in sorted(per_policy["ratio"].unique()):
                    cell_rows = per_policy[per_policy["ratio"] == ratio]
                    cells = [_mean_sd(cell_rows[t]) for t in [*columns, "mean", "overall"]]
                    lines.append(f"| {arch} | {policy} | {ratio_label(ratio)} | {n_seeds[(arch, policy, ratio)]} | "
                                 + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Cells: mean ± sample sd (ddof=1) over seeds; a single seed shows the mean only. "
                 "`mean` = unweighted mean over test sets, computed per seed; `overall` = image-weighted "
                 "score over all test images pooled.")
    undefined_hd95 = _hd95_undefined_rows(long_df)
    if undefined_hd95:
        lines += ["", *_hd95_table(undefined_hd95)]
        notes = [*notes, f"HD95: undefined for some test images in {len(undefined_hd95)} run(s) (an empty "
                         "prediction or ground truth); the table under the mIoU table counts them."]

    diffs = paired_differences(long_df, testsets=testsets)
    lines += ["", "## Paired differences per seed", ""]
    lines.append("Each policy at ratio r (synthetic images per real image) minus `real`, and minus its size-matched "
                 "random control at the same ratio, with the same arch and seed: every synthetic policy trains with "
                 "round(r × real images) synthetic images, so `hard_band − hard` and `hard_faithful − hard` isolate "
                 "which hard samples are kept (same variant, same size, a selection vs the uniform draw) and "
                 "`hard − plain` (`feedback`, `mined` likewise) isolates the generator (same size, same conditions). "
                 "Cells: mean ± sd (ddof=1) over seeds of the per-seed difference; `95 % (mean)`: the interval of "
                 "Δ mean (`contrasts.csv`, method t over seeds or, with one seed, a paired bootstrap over test "
                 "images).")
    lines.append("")
    if diffs.empty:
        lines += ["No pairs (the benchmark has no `real` policy or controls for the same arch and seed).", ""]
    else:
        lines.append("| metric | arch | policy | ratio | vs | seeds | Δ mean | Δ overall | 95 % (mean) |")
        lines.append("|---|---|---|---:|---|---:|---:|---:|---|")
        for metric in MARKDOWN_METRICS:
            per_metric = diffs[diffs["metric"] == metric]
            for arch in _ordered(per_metric["arch"], []):
                per_arch = per_metric[per_metric["arch"] == arch]
                for policy in _ordered(per_arch["policy"], POLICY_ORDER):
                    per_policy = per_arch[per_arch["policy"] == policy]
                    for ratio in sorted(per_policy["ratio"].unique()):
                        per_ratio = per_policy[per_policy["ratio"] == ratio]
                        for reference in _ordered(per_ratio["reference"], POLICY_ORDER):
                            pair = per_ratio[per_ratio["reference"] == reference]
                            found = interval_of.get((arch, policy, float(ratio), reference, metric))
                            lines.append(
                                f"| {metric} | {arch} | {policy} | {ratio_label(ratio)} | {reference} | "
                                f"{pair['seed'].nunique()} | {_mean_sd(pair['d_mean'], signed=True)} | "
                                f"{_mean_sd(pair['d_overall'], signed=True)} | "
                                f"{'–' if found is None else _interval(found)} |"
                            )
        lines.append("")

    if runs_df is not None and not runs_df.empty:
        lines += ["## Training budget", ""]
        lines += _budget_lines(runs_df)
        lines.append("")

    if fidelity_df is not None and not fidelity_df.empty:
        threshold = fidelity_df["min_fidelity"].iloc[0] if "min_fidelity" in fidelity_df.columns else None
        judges = sorted({j for v in fidelity_df.get("judges", pd.Series(dtype=str)).dropna()
                         for j in str(v).split(";")})
        lines += ["## Fidelity guard", ""]
        lines.append("Generated samples whose fidelity (mean of the real-only judges' Dice against the "
                     "conditioning mask and the held-out backbone's calibrated feature separation inside vs outside "
                     "the mask) is below filter.min_fidelity"
                     + (f" ({threshold:g})" if threshold is not None else "")
                     + ": a sample that no longer shows its polyp is label noise, not hardness. `hard_faithful` "
                     "trains only on the hard samples that pass. The judges are separate real-only runs"
                     + (f" ({', '.join(f'`{j}`' for j in judges)})" if judges else "")
                     + ", never the benchmark's own segmenters, so the guard does not pick samples by the runs "
                     "they are compared against.")
        lines.append("")
        lines.append("| variant | samples | mean fidelity | rejected |")
        lines.append("|---|---:|---:|---:|")
        for _, row in fidelity_df.iterrows():
            lines.append(f"| {row['variant']} | {int(row['n'])} | {row['mean_fidelity']:.3f} | "
                         f"{int(row['rejected'])} ({int(row['rejected']) / max(int(row['n']), 1):.0%}) |")
        lines.append("")

    if anchors is not None:
        lines += _anchor_lines(anchors, testsets)
    if mask_following:
        lines += ["## Do the samples follow their masks?", "",
                  " ".join(mask_following) + " (`mask_following.csv`: each measure's ratio is the samples' gap between "
                  "their own and a shuffled mask, relative to the real images' same gap.)", ""]
    if notes:
        lines += ["## Measures not defined on this data", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    lines += [protocol_paragraph(protocol, anchors=anchors is not None), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- runs
INFEASIBLE_COLUMNS: list[str] = ["policy", "ratio", "seed", "pool", "need", "archs", "reason"]


def read_run_records(run_records: Iterable[str | Path | Mapping[str, object]]) -> list[dict]:
    """``run.json`` records (paths or dicts) as dicts, each with ``_source`` (where it came from)."""
    records = []
    for record in run_records:
        where = "run record"
        if not isinstance(record, Mapping):
            where = str(record)
            path = Path(record)
            if not path.is_file():
                raise DataError(f"{path}: run record not found")
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: unreadable run record ({err})") from err
        records.append({"_source": where, **record})
    return records


def infeasible_table(run_records: Iterable[str | Path | Mapping[str, object]]) -> pd.DataFrame:
    """The subsets that could not be filled (``filter.on_short_pool: skip``): one row per (policy, ratio, seed)
    with the pool size, the need, the archs whose runs were skipped and why (from the skipped runs' records)."""
    rows: dict[tuple, dict] = {}
    for record in read_run_records(run_records):
        if not record.get("skipped"):
            continue
        key = (str(record["policy"]), float(record["ratio"]), int(record["seed"]))
        row = rows.setdefault(key, {"policy": key[0], "ratio": key[1], "seed": key[2], "pool": record.get("pool"),
                                    "need": record.get("need"), "archs": [], "reason": record.get("reason")})
        row["archs"].append(str(record["arch"]))
    table = pd.DataFrame([{**r, "archs": " ".join(sorted(r["archs"]))} for r in rows.values()],
                         columns=INFEASIBLE_COLUMNS)
    order = {p: i for i, p in enumerate(_ordered(table["policy"], POLICY_ORDER))}
    return table.sort_values(["policy", "ratio", "seed"], key=lambda c: c.map(order) if c.name == "policy" else c
                             ).reset_index(drop=True)


def infeasible_lines(infeasible_df: pd.DataFrame | None) -> list[str]:
    """benchmark.md's section on the subsets whose pool was too short (none: no section)."""
    if infeasible_df is None or infeasible_df.empty:
        return []
    lines = ["## Subsets that could not be filled", "",
             "These policies' pools held fewer samples than the ratio needs (filter.on_short_pool: skip): their "
             "segmenter runs were skipped and are missing from every table below.", "",
             "| policy | ratio | seed | pool | need | archs skipped |", "|---|---:|---:|---:|---:|---|"]
    for row in infeasible_df.itertuples(index=False):
        lines.append(f"| {row.policy} | {ratio_label(row.ratio)} | {row.seed} | {row.pool} | {row.need} | {row.archs} |")
    return [*lines, ""]


def runs_table(run_records: Iterable[str | Path | Mapping[str, object]]) -> pd.DataFrame:
    """One row per segmenter run: ``arch, policy, ratio, seed, real_images, synthetic_images, iterations,
    images_seen``, then the run's recipe (:data:`RUNS_RECIPE_COLUMNS`: optimizer, learning rate, weight decay, lr
    decay, multi-scale, clip, augmentation) when the records carry it (per-arch recipes: archs may differ). Runs
    skipped for an infeasible subset are left out (:func:`infeasible_table` lists them).

    ``run_records``: ``run.json`` paths (written beside each benchmark model by the train_segmenter
    rule) or their dicts. Raises :class:`DataError` (naming the file) on a missing field (a null ratio
    included) or a duplicate run, and when runs of one (arch, seed) differ in iterations or images seen:
    the benchmark compares policies (and ratios) at an equal budget only.
    """
    rows, sources = [], []
    for record in read_run_records(run_records):
        if record.get("skipped"):  # an infeasible subset's run (infeasible_table lists it)
            continue
        where = record["_source"]
        missing = [c for c in RUNS_COLUMNS if record.get(c) is None]
        if missing:
            raise DataError(f"{where}: run record lacks {missing}")
        row = {c: record[c] for c in RUNS_COLUMNS}
        for c in RUNS_RECIPE_COLUMNS:  # the run's recipe (per arch); multi_scale as "0.75/1/1.25"
            if c in record:
                value = record[c]
                row[c] = "/".join(f"{float(v):g}" for v in value) if isinstance(value, list) else value
        rows.append(row)
        sources.append(where)
    recipe_columns = [c for c in RUNS_RECIPE_COLUMNS if any(c in row for row in rows)]
    table = pd.DataFrame(rows, columns=RUNS_COLUMNS + recipe_columns)
    counts = {c: int for c in RUNS_COLUMNS[3:]}
    if table.empty:
        return table.astype({"ratio": float, **counts})
    try:
        table = table.astype({"arch": str, "policy": str, "ratio": float, **counts})
    except (TypeError, ValueError) as err:
        raise DataError(f"run records: non-integer counts or a non-numeric ratio ({err})") from err
    table["_source"] = sources
    duplicated = table.duplicated(["arch", "policy", "ratio", "seed"], keep=False)
    if duplicated.any():
        raise DataError(f"run records: duplicate runs in {table.loc[duplicated, '_source'].tolist()}")
    for (arch, seed), group in table.groupby(["arch", "seed"]):
        if group["iterations"].nunique() > 1 or group["images_seen"].nunique() > 1:
            budgets = group[["policy", "iterations", "images_seen", "_source"]].to_dict("records")
            raise DataError(f"run records: unequal training budgets for arch {arch!r}, seed {seed}: {budgets}")
    order = {p: i for i, p in enumerate(_ordered(table["policy"], POLICY_ORDER))}
    table = table.sort_values(["arch", "seed", "policy", "ratio"],
                              key=lambda c: c.map(order) if c.name == "policy" else c)
    return table[RUNS_COLUMNS + recipe_columns].reset_index(drop=True)


# ---------------------------------------------------------------------------------------- hardness


def hardness_table(score_csvs: Iterable[str | Path] | pd.DataFrame, loss_backbones: Sequence[str]) -> pd.DataFrame:
    """Mean prototype discrepancy per (variant, backbone): ``variant, backbone, mean_discrepancy, n, in_loss``.

    ``mean_discrepancy`` is the mean ``distance`` of the variant's samples to the real prototype
    under that backbone; ``n`` counts the samples with a finite distance. ``in_loss`` says whether
    the backbone's L_dis entered the hard generator's loss (``loss_backbones``, config
    ``hard.loss_backbones``): discrepancy under a backbone outside the loss is the held-out test of
    whether hardness transfers, under one inside it partly the training objective.
    """
    scores = _read_scores(score_csvs)
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
    order = {v: i for i, v in enumerate(_ordered(table["variant"], VARIANT_ORDER))}
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
    scores = _read_scores(score_csvs)
    rows = []
    for segmenter, path in sorted(sample_loss_csvs.items()):
        losses = _read_losses(segmenter, path)
        keys = [c for c in ("sample_id", "variant") if c in losses.columns]
        joined = scores.merge(losses, on=keys, how="inner").dropna(subset=["distance", "loss", "fg_fraction"])
        if joined.empty:
            log.warning("%s: no sample ids in common with the score tables", path)
        for backbone in sorted(scores["backbone"].unique()):
            per_backbone = joined[joined["backbone"] == backbone]
            groups = {v: per_backbone[per_backbone["variant"] == v] for v in _ordered(scores["variant"], VARIANT_ORDER)}
            groups["all"] = per_backbone[per_backbone["variant"] != "real"]
            for variant, group in groups.items():
                if group.empty and variant != "all":
                    continue  # e.g. real training images: the segmenters' losses cover generated samples only
                rows.append(
                    {
                        "backbone": backbone,
                        "segmenter": segmenter,
                        "variant": variant,
                        "spearman": _spearman(group["distance"], group["loss"]),
                        "partial_spearman": partial_spearman(group["distance"], group["loss"], group["fg_fraction"]),
                        "n": len(group),
                    }
                )
    return pd.DataFrame(rows, columns=TRANSFER_COLUMNS).astype({"spearman": float, "partial_spearman": float,
                                                                "n": int})


# ------------------------------------------------------------------------------------------- plots


def _as_table(source: pd.DataFrame | str | Path, required: Sequence[str], what: str) -> pd.DataFrame:
    table = source.copy() if isinstance(source, pd.DataFrame) else _read_table(source, required, what)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{what} table lacks columns {missing}")
    table["sample_id"] = table["sample_id"].astype(str)
    return table


def _has_path(value: object) -> bool:
    return isinstance(value, (str, Path)) and str(value) not in ("", "nan")


def plot_grid(
    real_pairs: pd.DataFrame | str | Path,
    generated_by_variant: Mapping[str, pd.DataFrame | str | Path],
    out_png: str | Path,
    n: int = 6,
) -> list[str]:
    """Side-by-side grid: one row per condition, columns condition | real | one per variant.

    ``real_pairs`` has ``sample_id`` (the condition's id, shared with the generated manifests),
    ``image`` (the real image; empty for synthetic layouts) and ``mask``, optionally ``condition``
    (shown instead of the mask). ``generated_by_variant`` maps a variant to its generation manifest
    (``sample_id, image``). Rows prefer sample ids generated by every variant and having a real
    image, so each row compares the same source mask. Returns the sample ids shown.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    real = _as_table(real_pairs, ("sample_id", "image", "mask"), "real pairs").drop_duplicates("sample_id")
    generated = {
        v: _as_table(t, ("sample_id", "image"), f"generated manifest ({v})")
        .drop_duplicates("sample_id")
        .set_index("sample_id")["image"]
        for v, t in generated_by_variant.items()
    }
    real = real.set_index("sample_id")

    def coverage(sid: str) -> tuple[int, int, str]:
        n_variants = sum(sid in g.index for g in generated.values())
        has_real = int(_has_path(real.at[sid, "image"])) if sid in real.index else 0
        return (-n_variants, -has_real, sid)

    candidates = set(real.index).union(*[set(g.index) for g in generated.values()])
    chosen = sorted(candidates, key=coverage)[:n]
    if not chosen:
        raise DataError(f"{out_png}: nothing to plot (no real pairs and no generated images)")
    columns = ["condition", "real", *generated]
    figure = Figure(figsize=(1.6 * len(columns), 1.6 * len(chosen)))
    axes = figure.subplots(len(chosen), len(columns), squeeze=False)
    for r, sid in enumerate(chosen):
        cells: list[tuple[str | None, bool]] = []
        if sid in real.index:
            cond = real.at[sid, "condition"] if "condition" in real.columns else None
            cells.append((cond if _has_path(cond) else real.at[sid, "mask"], True))
            cells.append((real.at[sid, "image"] if _has_path(real.at[sid, "image"]) else None, False))
        else:
            cells += [(None, True), (None, False)]
        cells += [(g.get(sid) if _has_path(g.get(sid)) else None, False) for g in generated.values()]
        for c, (path, gray) in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if path is None:
                ax.text(0.5, 0.5, "—", ha="center", va="center", transform=ax.transAxes)
            elif gray:
                ax.imshow(read_gray(path), cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(read_rgb(path))
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(sid, fontsize=6)
    _save_figure(figure, out_png)
    return chosen


def plot_histograms(score_df: pd.DataFrame, out_png: str | Path, bins: int = 30) -> None:
    """Discrepancy distributions: one panel per backbone, one density curve (step histogram) per variant."""
    missing = [c for c in ("variant", "backbone", "distance") if c not in score_df.columns]
    if missing:
        raise DataError(f"score table lacks columns {missing}")
    scores = score_df.dropna(subset=["distance"])
    backbones = sorted(scores["backbone"].unique())
    if not backbones:
        raise DataError(f"{out_png}: no finite distances to plot")
    figure = Figure(figsize=(4.5 * len(backbones), 3.2))
    axes = figure.subplots(1, len(backbones), squeeze=False)[0]
    for ax, backbone in zip(axes, backbones):
        per_backbone = scores[scores["backbone"] == backbone]
        # shared bin edges so the variants' curves are comparable within a panel
        edges = np.histogram_bin_edges(per_backbone["distance"].to_numpy(), bins=bins)
        for variant in _ordered(per_backbone["variant"], VARIANT_ORDER):
            values = per_backbone.loc[per_backbone["variant"] == variant, "distance"].to_numpy()
            ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.5, label=f"{variant} (n={len(values)})")
        ax.set_title(f"backbone: {backbone}")
        ax.set_xlabel("distance to real prototype")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    _save_figure(figure, out_png)


def _run_label(policy: str, ratio: float) -> str:
    return policy if policy == "real" else f"{policy} ×{ratio_label(ratio)}"


def plot_benchmark(long_df: pd.DataFrame, out_png: str | Path, metric: str = "mDice") -> None:
    """Grouped bars: mean over test sets of ``metric`` per policy and ratio (``hard ×0.5``), one group per arch;
    error bars = sd over seeds. Seeds whose mean is missing (NaN) are left out; a bar with none is not drawn (never
    drawn as 0)."""
    summary = benchmark_summary(long_df, metrics=[metric])
    if summary.empty:
        raise DataError(f"{out_png}: no {metric} rows to plot")
    stats = summary.groupby(["arch", "policy", "ratio"])["mean"].agg(["mean", "std"]).fillna({"std": 0.0})
    stats = stats[np.isfinite(stats["mean"])]
    archs = _ordered(summary["arch"], [])
    runs = [(p, r) for p in _ordered(summary["policy"], POLICY_ORDER)
            for r in sorted(summary.loc[summary["policy"] == p, "ratio"].unique())]
    width = 0.8 / len(runs)
    figure = Figure(figsize=(max(4.0, 1.2 * len(archs) * len(runs) * 0.6 + 2), 3.5))
    ax = figure.subplots()
    for i, (policy, ratio) in enumerate(runs):
        drawn = [k for k, a in enumerate(archs) if (a, policy, ratio) in stats.index]  # a missing bar is left out
        ax.bar(np.arange(len(archs))[drawn] + (i - (len(runs) - 1) / 2) * width,
               [stats.at[(archs[k], policy, ratio), "mean"] for k in drawn], width,
               yerr=[stats.at[(archs[k], policy, ratio), "std"] for k in drawn], label=_run_label(policy, ratio))
    ax.set_xticks(np.arange(len(archs)), archs)
    ax.set_ylabel(f"{metric} (mean over test sets)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=min(len(runs), 3))
    _save_figure(figure, out_png)


def plot_ratio(long_df: pd.DataFrame, out_png: str | Path, metrics: Sequence[str] = MARKDOWN_METRICS) -> None:
    """Score against the synthetic ratio: one panel per arch (rows) and metric (columns, mDice and mIoU).

    Each synthetic policy is a line over its ratios (``segment.synthetic_ratios``) of the mean over test
    sets (per seed, as in :func:`benchmark_summary`), with error bars = sd over seeds; the real-only
    segmenter (ratio 0) is a horizontal line with a band of ± its sd. Seeds whose mean is missing (NaN) are left
    out; a point (or the real line) with none is not drawn (never drawn as 0).
    """
    summary = benchmark_summary(long_df, metrics=metrics)
    if summary.empty:
        raise DataError(f"{out_png}: no {'/'.join(metrics)} rows to plot")
    stats = summary.groupby(["arch", "metric", "policy", "ratio"])["mean"].agg(["mean", "std"]).fillna({"std": 0.0})
    stats = stats[np.isfinite(stats["mean"])]
    archs = _ordered(summary["arch"], [])
    present = [m for m in metrics if m in set(summary["metric"])]
    ratios = sorted(summary.loc[summary["policy"] != "real", "ratio"].unique())
    figure = Figure(figsize=(4.8 * len(present), 3.4 * len(archs)), layout="constrained")
    axes = figure.subplots(len(archs), len(present), squeeze=False)
    policies = [p for p in _ordered(summary["policy"], POLICY_ORDER) if p != "real"]
    colours = {p: f"C{i}" for i, p in enumerate(policies)}
    for r, arch in enumerate(archs):
        for c, metric in enumerate(present):
            ax = axes[r, c]
            key = (arch, metric)
            if (*key, "real", 0.0) in stats.index:
                mean, sd = stats.loc[(*key, "real", 0.0), ["mean", "std"]]
                ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label="real only")
                if sd > 0:
                    ax.axhspan(mean - sd, mean + sd, color="black", alpha=0.1)
            for policy in policies:
                rows = [(ratio, *stats.loc[(*key, policy, ratio), ["mean", "std"]])
                        for ratio in ratios if (*key, policy, ratio) in stats.index]
                if not rows:
                    continue
                xs, means, sds = (np.array(v, dtype=float) for v in zip(*rows))
                ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, color=colours[policy], label=policy)
            if ratios:
                ax.set_xticks(ratios, [ratio_label(x) for x in ratios])
            ax.set_xlabel("synthetic images per real image (ratio)")
            ax.set_ylabel(f"{metric} (mean over test sets)")
            ax.set_title(f"{arch}: {metric}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:  # nothing drawn when every value of the panel is missing
                ax.legend(fontsize=7)
    _save_figure(figure, out_png)


#: Columns of a Control-LoRA training log (``hardgen.generator.train.LOG_COLUMNS``) that the loss plot reads.
TRAIN_LOG_COLUMNS: tuple[str, ...] = ("step", "loss", "mse", "extra")

#: Variants of the loss plot, in display order (others follow alphabetically).
LORA_ORDER: tuple[str, ...] = ("plain", "hard", "feedback")


def _smooth(values: pd.Series, window: int) -> pd.Series:
    return values.rolling(window, min_periods=1, center=True).mean()


def plot_training_loss(train_logs: Mapping[str, str | Path | pd.DataFrame], out_png: str | Path) -> None:
    """Training curves of every Control-LoRA: diffusion MSE per step (left) and the fine-tuning term (right).

    ``train_logs`` maps a variant to its ``train_log.csv`` (``step, loss, mse, extra, ...``; one row per optimiser
    step). Thin lines are the raw per-step values, thick lines a centred moving average over about a tenth of the
    run. The right panel shows ``extra`` (hard: λ·L_dis, feedback: the judge term) for the variants that have one;
    for ``plain`` it is zero by construction.
    """
    logs = {variant: _as_log(train_logs[variant], variant) for variant in _ordered(train_logs, LORA_ORDER)}
    if not logs or all(t.empty for t in logs.values()):
        raise DataError(f"{out_png}: no training steps to plot")
    figure = Figure(figsize=(10, 3.4))
    ax_mse, ax_extra = figure.subplots(1, 2)
    colours = {v: f"C{i}" for i, v in enumerate(logs)}
    any_extra = False
    for variant, table in logs.items():
        if table.empty:
            continue
        window = max(1, len(table) // 10)
        for ax, column in ((ax_mse, "mse"), (ax_extra, "extra")):
            values = table[column].astype(float)
            if column == "extra" and not np.any(values.to_numpy() != 0):
                continue
            any_extra |= column == "extra"
            ax.plot(table["step"], values, color=colours[variant], alpha=0.3, linewidth=0.8)
            ax.plot(table["step"], _smooth(values, window), color=colours[variant], linewidth=1.8,
                    label=f"{variant} ({len(table)} steps)")
    ax_mse.set_title("diffusion loss (MSE on the noise / v target)")
    ax_mse.set_xlabel("optimiser step of the run")
    ax_mse.set_ylabel("MSE")
    ax_mse.legend(fontsize=7)
    ax_extra.set_title("fine-tuning term (hard: λ·L_dis, feedback: judge term)")
    ax_extra.set_xlabel("optimiser step of the run")
    if any_extra:
        ax_extra.legend(fontsize=7)
    else:
        ax_extra.text(0.5, 0.5, "no fine-tuned variant in this run", ha="center", va="center",
                      transform=ax_extra.transAxes)
    _save_figure(figure, out_png)


def _as_log(source: str | Path | pd.DataFrame, variant: str) -> pd.DataFrame:
    table = source.copy() if isinstance(source, pd.DataFrame) else _read_table(
        source, TRAIN_LOG_COLUMNS, f"training log ({variant})")
    missing = [c for c in TRAIN_LOG_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"training log ({variant}) lacks columns {missing}")
    return table.sort_values("step").reset_index(drop=True)


# ------------------------------------------------------------------------------------- entry point
def real_pairs_from(conditions_csv: str | Path, data_manifest_csv: str | Path) -> pd.DataFrame:
    """Join the conditions table with the data manifest: ``sample_id, image, mask, condition``.

    ``image`` is the real training image of the condition's source mask (empty for layouts whose
    source is not in the manifest).
    """
    conditions = _read_table(conditions_csv, ("sample_id", "source_id", "condition", "mask"), "conditions")
    manifest = _read_table(data_manifest_csv, ("id", "image"), "data manifest")
    joined = conditions.astype({"source_id": str}).merge(
        manifest[["id", "image"]].astype({"id": str}).rename(columns={"id": "source_id"}), on="source_id", how="left"
    )
    return joined[["sample_id", "image", "mask", "condition"]].fillna({"image": ""})


def _pairs_from_generated(generated: Mapping[str, Path], data_manifest_csv: str | Path) -> pd.DataFrame:
    """Grid rows without the conditions table: condition and mask from the generated manifests; the
    real image only where a sample id is also a data-manifest id."""
    frames = [_read_table(p, ("sample_id", "mask", "condition"), f"generated manifest ({v})") for v, p in generated.items()]
    pairs = pd.concat(frames, ignore_index=True).astype({"sample_id": str}).drop_duplicates("sample_id")
    manifest = _read_table(data_manifest_csv, ("id", "image"), "data manifest").astype({"id": str})
    images = manifest.set_index("id")["image"]
    pairs["image"] = [images.get(sid, "") for sid in pairs["sample_id"]]
    return pairs[["sample_id", "image", "mask", "condition"]]


def _keyed_paths(paths: Mapping[str, str | Path | pd.DataFrame], what: str) -> dict[str, Path | pd.DataFrame]:
    """``{name: path}`` as given (names are never read off paths: the workflow keys every input)."""
    if not isinstance(paths, Mapping):
        raise TypeError(f"{what}: pass a {{name: path}} mapping (names are not read off paths)")
    return {str(k): v if isinstance(v, pd.DataFrame) else Path(v) for k, v in paths.items()}


def write_report(
    eval_csvs: Mapping[EvalKey, str | Path],
    score_csvs: Iterable[str | Path],
    generated_manifests: Mapping[str, str | Path],
    data_manifest_csv: str | Path,
    tables_dir: str | Path,
    plots_dir: str | Path,
    *,
    loss_backbones: Sequence[str],
    run_records: Iterable[str | Path | Mapping[str, object]] = (),
    sample_loss_csvs: Mapping[str, str | Path | pd.DataFrame] | None = None,
    conditions_csv: str | Path | None = None,
    train_logs: Mapping[str, str | Path] | None = None,
    demo: bool = False,
    grid_rows: int = 6,
    judge_loss_csv: str | Path | None = None,
    feature_files: Mapping[str, str | Path] | None = None,
    min_fidelity: float | None = None,
    fidelity_csvs: Mapping[str, str | Path] | None = None,
    testsets: Sequence[str] | None = None,
    eval_images: Mapping[EvalKey, str | Path] | None = None,
    anchors_csv: str | Path | None = None,
    published: Mapping[str, str | None] | None = None,
    reproduce_tolerance: float = repro.DEFAULT_TOLERANCE,
    primary_contrast: Mapping[str, object] | None = None,
    run: RunDescription | None = None,
    notes: Sequence[str] = (),
    mask_following_csv: str | Path | pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write every table and plot of the run; returns ``{name: path}`` of what was written.

    Inputs, every one keyed by the caller (names are never read off paths): evaluation CSVs
    (``{(arch, policy, ratio, seed): path}``; columns ``testset, metric, value``), score CSVs, generation manifests
    (``{variant: path}``), the data manifest, ``loss_backbones`` (config ``hard.loss_backbones``), the benchmark
    runs' ``run.json`` records (skipped runs, ``filter.on_short_pool: skip``, go to ``infeasible.csv`` and the
    benchmark.md section on unfilled subsets), optionally per-sample losses of the real-trained benchmark
    segmenters (``{"<arch>/seed-<s>": path or table}``) and the conditions table (lets the grid show each
    condition's real image; without it only sample ids that are data-manifest ids get one), and the Control-LoRA
    training logs (``{variant: path}``).
    ``demo`` adds the note that demo numbers are noise by design.
    ``testsets`` (``data.testsets``) orders the test sets everywhere (any number, one included).

    Reproduction and intervals: ``reproduction.csv`` (arch, testset, metric, ours, published, diff:
    :func:`hardgen.evaluation.reproduction.reproduction_table` of the arches of ``published`` = ``{arch:
    segment.archs.<arch>.published}`` against ``anchors_csv``, config ``report.anchors``; header only without
    either) and ``contrasts.csv`` (arch, policy, ratio, versus, metric, n, mean_diff, ci_low, ci_high, method:
    :func:`hardgen.evaluation.contrasts.contrast_table`, which for single-seed contrasts reads ``eval_images``, keyed like the
    evaluation tables); benchmark.md opens with the reproduction sentences (``reproduce_tolerance``) and the
    ``primary_contrast`` (config ``report.primary_contrast``). ``run`` (:class:`hardgen.report.run_text.RunDescription`)
    describes the run and its protocol at the top and bottom of benchmark.md; a measure this data leaves undefined is
    a marked row, never an error, and benchmark.md says so (:func:`hardgen.report.run_text.undefined_notes` of the tables
    written here, after the caller's ``notes``). ``mask_following_csv`` (``mask_following.csv``) adds its sentences
    (:func:`hardgen.scoring.mask_following.mask_following_sentences`); an undefined measure of it is listed with the others.

    Tables (``tables_dir``): ``benchmark.csv`` (long: arch, policy, ratio, seed, testset, metric, value),
    ``benchmark.md``, ``runs.csv`` (arch, policy, ratio, seed, real_images, synthetic_images, iterations,
    images_seen), ``hardness.csv`` (variant, backbone, mean_discrepancy, n, in_loss),
    ``hardness_transfer.csv`` (backbone, segmenter, variant, spearman, partial_spearman, n; header only
    without ``sample_loss_csvs``), and with ``min_fidelity`` (``filter.min_fidelity``) ``fidelity.csv``
    (variant, n, mean_fidelity, rejected, ...: :func:`hardgen.scoring.fidelity.fidelity_summary`, also in
    ``benchmark.md``; ``judges`` names the guard's judge runs, read from ``fidelity_csvs``, each generated
    variant's ``results/fidelity/<variant>.csv``). Plots (``plots_dir``): ``grid.png``, ``histograms.png``, ``benchmark.png``,
    ``ratio.png`` (score against the synthetic ratio, :func:`plot_ratio`), and ``training_loss.png`` when
    ``train_logs`` are given.

    The transfer study and the sample views (:mod:`hardgen.report.transfer`, :mod:`hardgen.report.gallery`):
    ``transfer_matrix.csv`` / ``.png`` (sources: every backbone, the fused in-loss score and, with
    ``judge_loss_csv``, the feedback judge's per-sample loss; evaluators: every backbone and each arch's
    real-trained segmenters of ``sample_loss_csvs``), ``hardest.png`` (per variant the hardest kept and the
    samples the fidelity guard rejects, ``min_fidelity``) and, with ``feature_files`` (``{scored set: path}``,
    ``real`` included), ``features.png``.
    """
    tables_dir, plots_dir = Path(tables_dir), Path(plots_dir)
    written = {
        "benchmark_csv": tables_dir / "benchmark.csv",
        "benchmark_md": tables_dir / "benchmark.md",
        "reproduction_csv": tables_dir / "reproduction.csv",
        "contrasts_csv": tables_dir / "contrasts.csv",
        "runs_csv": tables_dir / "runs.csv",
        "hardness_csv": tables_dir / "hardness.csv",
        "hardness_transfer_csv": tables_dir / "hardness_transfer.csv",
        "grid_png": plots_dir / "grid.png",
        "histograms_png": plots_dir / "histograms.png",
        "benchmark_png": plots_dir / "benchmark.png",
        "ratio_png": plots_dir / "ratio.png",
    }
    generated = _keyed_paths(generated_manifests, "generated manifests")
    losses = _keyed_paths(sample_loss_csvs or {}, "sample losses")
    records = read_run_records(run_records)
    infeasible = infeasible_table(records)
    skipped = [(r["arch"], r["policy"], r["ratio"], r["seed"]) for r in records if r.get("skipped")]
    long = benchmark_long(eval_csvs, skipped)
    runs = runs_table(records)
    written["infeasible_csv"] = tables_dir / "infeasible.csv"
    write_csv(written["infeasible_csv"], infeasible)
    write_csv(written["benchmark_csv"], long)
    write_csv(written["runs_csv"], runs)
    scores = _read_scores(list(score_csvs))
    fidelity = None
    if min_fidelity is not None:
        from hardgen.scoring.fidelity import fidelity_summary, guard_judges

        if not fidelity_csvs:
            raise DataError("fidelity guard: the report needs the variants' fidelity tables "
                            "(results/fidelity/<variant>.csv) to name the guard's judges")
        judges = guard_judges(_keyed_paths(fidelity_csvs, "fidelity tables"))
        fidelity = fidelity_summary(scores, min_fidelity, judges)
        written["fidelity_csv"] = tables_dir / "fidelity.csv"
        write_csv(written["fidelity_csv"], fidelity)
    anchors = repro.load_anchors(anchors_csv) if anchors_csv is not None else None
    published = dict(published or {})
    if anchors is None and any(published.values()):
        raise DataError(f"report.anchors: null, but segment.archs {sorted(a for a, m in published.items() if m)} "
                        "name a published model")
    order = list(testsets) if testsets is not None else sorted(set(long["testset"]) - {OVERALL})
    no_anchors = pd.DataFrame(columns=repro.ANCHOR_COLUMNS)
    reproduction = repro.reproduction_table(long, anchors if anchors is not None else no_anchors, published, order)
    write_csv(written["reproduction_csv"], reproduction)
    contrasts = contrast_lib.contrast_table(paired_differences(long, testsets=order), order,
                                            _eval_mapping(eval_images or {}))
    write_csv(written["contrasts_csv"], contrasts)
    write_csv(written["hardness_csv"], hardness_table(scores, loss_backbones))
    transfer_table = hardness_transfer(scores, losses)
    write_csv(written["hardness_transfer_csv"], transfer_table)

    written["transfer_matrix_csv"] = tables_dir / "transfer_matrix.csv"
    written["transfer_matrix_png"] = plots_dir / "transfer_matrix.png"
    matrix = transfer.transfer_matrix(scores, loss_backbones, losses, judge_loss_csv)
    write_csv(written["transfer_matrix_csv"], matrix)
    notes = [*notes, *undefined_notes(contrasts=contrasts, transfer=transfer_table, transfer_matrix=matrix)]
    following: list[str] = []
    if mask_following_csv is not None:
        from hardgen.core.io import table_or_csv
        from hardgen.scoring.mask_following import OK, mask_following_sentences

        _, table = table_or_csv(mask_following_csv, "mask-following table")
        following = mask_following_sentences(table)  # one per measure, in the table's order
        real = table[table["variant"] == "real"].set_index("measure")["status"]
        notes += [f"`mask_following.csv`: {sentence}"
                  for measure, sentence in zip(table["measure"].unique(), following, strict=True)
                  if real.get(measure) != OK]
    write_text(written["benchmark_md"], benchmark_markdown(
        long, runs, demo=demo, fidelity_df=fidelity, testsets=order, anchors=anchors, reproduction=reproduction,
        published=published if published else None, tolerance=reproduce_tolerance, contrasts=contrasts,
        primary=primary_contrast, infeasible_df=infeasible, run=run, notes=notes, mask_following=following))
    transfer.plot_transfer_matrix(matrix, written["transfer_matrix_png"])
    written["hardest_png"] = plots_dir / "hardest.png"
    gallery.plot_hardest(gallery.sample_hardness(scores, loss_backbones), generated, written["hardest_png"],
                         min_fidelity)
    if feature_files:
        written["features_png"] = plots_dir / "features.png"
        gallery.plot_features(_keyed_paths(feature_files, "feature files"),
                              loss_backbones, written["features_png"])
    if conditions_csv is not None:
        pairs = real_pairs_from(conditions_csv, data_manifest_csv)
    else:
        pairs = _pairs_from_generated(generated, data_manifest_csv)
    plot_grid(pairs, generated, written["grid_png"], n=grid_rows)
    plot_histograms(scores, written["histograms_png"])
    plot_benchmark(long, written["benchmark_png"])
    plot_ratio(long, written["ratio_png"])
    if train_logs:
        written["training_loss_png"] = plots_dir / "training_loss.png"
        plot_training_loss(_keyed_paths(train_logs, "train logs"),
                           written["training_loss_png"])
    log.info("report written: %s", ", ".join(str(p) for p in written.values()))
    return written
