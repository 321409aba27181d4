"""``benchmark.md``: the markdown report of the segmentation benchmark (reproduction, contrasts, score tables, paired
differences, training budget, fidelity guard, published anchors, mask following, undefined measures, protocol)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hardgen.config.validation import ratio_label
from hardgen.core import registry
from hardgen.core.io import DataError
from hardgen.evaluation import contrasts as contrast_lib
from hardgen.evaluation import reproduction as repro
from hardgen.evaluation.metrics import HD95_UNDEFINED, N_IMAGES
from hardgen.report.run_text import RunDescription, protocol_paragraph, run_paragraph
from hardgen.report.summary import (
    BENCHMARK_COLUMNS,
    MARKDOWN_METRICS,
    OVERALL,
    benchmark_summary,
    paired_differences,
    run_label,
)
from hardgen.report.tables import POLICY_ORDER, in_display_order


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


DEMO_NOTE = (
    "**Demo run: these numbers are noise by design.** It trains its segmenters for a few iterations at a small "
    "size, with samples of a diffusion model that is either tiny and pre-trained for minutes on procedural "
    "polyp-like images (the demo's data, or a handful of your own images in a rehearsal) or random-init "
    "(model.base: tiny, built from model.tiny_config: the tests, and `make paper-smoke` at SD1.5's size); the "
    "tables show that every stage runs end to end, not whether hard samples help."
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
            for p in in_display_order(synthetic.index.get_level_values("policy"), POLICY_ORDER)
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
    set) with each model's training-set size and published checkpoint, then the published headlines (testset
    ``mean`` rows)."""
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
        trained = anchors.groupby("model", sort=False)[["n_train", "selection"]].first()
        lines += ["", f"`mean`: over the {len(shown)} test sets shown, where a model has all of them."
                  + (f" No anchors for {', '.join(missing)}." if missing else "")
                  + " Trained on (real images, published checkpoint): "
                  + "; ".join(f"{model} {int(trained.at[model, 'n_train']):,}, "
                              f"{str(trained.at[model, 'selection']).replace('_', ' ')}" for model in models)
                  + ".", ""]
    headlines = anchors[anchors["testset"] == repro.MEAN]
    for _, row in headlines.iterrows():
        lines.append(f"Published headline: {row['model']}, {row['value'] * 100:.2f} % mean {row['metric']} over "
                     "its paper's test sets.")
    if len(headlines):
        lines.append("")
    return lines


def _interval(row: Mapping[str, object] | pd.Series) -> str:
    """A contrast's 95 % interval as ``[low, high]`` (signed), or ``undefined``."""
    if pd.isna(row["ci_low"]) or pd.isna(row["ci_high"]):
        return "undefined"  # a contrast without a pair of defined values (contrasts.csv: n 0, NaN)
    return f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def hd95_undefined_lines(long_df: pd.DataFrame) -> list[str]:
    """A sentence and a table of the runs (evaluation tables) where HD95 is undefined for some test images (the binary
    protocol's count rows ``HD95_undefined`` and ``n_images``, :data:`hardgen.evaluation.metrics.BINARY_COUNTS`, summed
    over the test sets), in the tables' order: ``| cnn/real | 0 | 5 | 7 | missed |`` (run, seed, undefined, images,
    the test sets where none is defined, whose HD95 is NaN). One row per run keeps a benchmark of many runs readable.
    Nothing for tables without these rows (the polyp toolbox) or whose every HD95 is defined."""
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
    for arch in in_display_order(per_testset.index.get_level_values("arch"), []):
        mine = per_testset.xs(arch, level="arch")
        for policy in in_display_order(mine.index.get_level_values("policy"), POLICY_ORDER):
            for (ratio, seed), run in mine.xs(policy, level="policy").groupby(level=["ratio", "seed"], sort=True):
                undefined, images = run[HD95_UNDEFINED].sum(min_count=1), run[N_IMAGES].sum(min_count=1)
                if not undefined > 0:  # NaN or 0: every HD95 defined
                    continue
                none = sorted(run.index.get_level_values("testset")[run[HD95_UNDEFINED] == run[N_IMAGES]])
                rows.append(f"| {arch}/{run_label(policy, ratio)} | {seed} | {int(undefined)} | "
                            f"{int(images) if np.isfinite(images) else '–'} | {', '.join(none) or '–'} |")
    return rows


def infeasible_lines(infeasible_df: pd.DataFrame | None) -> list[str]:
    """benchmark.md's section on the subsets whose pool was too short (none: no section)."""
    if infeasible_df is None or infeasible_df.empty:
        return []
    lines = ["## Subsets that could not be filled", "",
             "These policies' pools held fewer samples than the ratio needs (filter.on_short_pool: skip): their "
             "segmenter runs were skipped and are missing from every table below.", "",
             "| policy | ratio | seed | pool | need | archs skipped |", "|---|---:|---:|---:|---:|---|"]
    for row in infeasible_df.itertuples(index=False):
        lines.append(f"| {row.policy} | {ratio_label(row.ratio)} | {row.seed} | {row.pool} | {row.need} "
                     f"| {row.archs} |")
    return [*lines, ""]


@dataclass(frozen=True, eq=False)
class BenchmarkTables:
    """The tables ``benchmark.md`` is written from: ``long`` (``benchmark.csv``) and, each optional, the training
    budget (``runs``: :func:`hardgen.report.run_records.runs_table`), what the fidelity guard rejects per variant
    (``fidelity``: :func:`hardgen.scoring.fidelity.fidelity_summary`), the published ``anchors``
    (:func:`hardgen.evaluation.reproduction.load_anchors`), ``reproduction``
    (:func:`hardgen.evaluation.reproduction.reproduction_table`), ``contrasts``
    (:func:`hardgen.evaluation.contrasts.contrast_table`) and the subsets that could not be filled (``infeasible``)."""

    long: pd.DataFrame
    runs: pd.DataFrame | None = None
    fidelity: pd.DataFrame | None = None
    anchors: pd.DataFrame | None = None
    reproduction: pd.DataFrame | None = None
    contrasts: pd.DataFrame | None = None
    infeasible: pd.DataFrame | None = None


@dataclass(frozen=True)
class MarkdownOptions:
    """What ``benchmark.md`` says around its tables.

    ``testsets``: the column order (``data.testsets``; None: sorted). ``demo``: a note that the numbers are noise by
    design. ``published``: ``{arch: anchors model or None}``, whose real-only baselines are checked against the
    anchors within ``tolerance``. ``primary``: ``report.primary_contrast``. ``run``
    (:class:`hardgen.report.run_text.RunDescription`): the opening paragraph on what was run; its protocol replaces
    ``protocol`` (``evaluate.protocol``). ``notes``: sentences on the measures this data leaves undefined
    (:func:`hardgen.report.run_text.undefined_notes`). ``mask_following``: the sentences of
    :func:`hardgen.scoring.mask_following.mask_following_sentences`.
    """

    testsets: Sequence[str] | None = None
    demo: bool = False
    published: Mapping[str, str | None] | None = None
    tolerance: float = repro.DEFAULT_TOLERANCE
    primary: Mapping[str, object] | None = None
    run: RunDescription | None = None
    protocol: str = "polyp_toolbox"
    notes: Sequence[str] = ()
    mask_following: Sequence[str] = ()


def markdown_report(tables: BenchmarkTables, options: MarkdownOptions = MarkdownOptions()) -> str:
    """``benchmark.md``: the markdown report of the segmentation benchmark.

    It opens with the run paragraph (``options.run``) and one sentence per arch of ``options.published``: whether its
    real-only baseline reproduces the published one. Then, with ``tables.contrasts``, the primary contrast with its 95 %
    interval, with inpainting variants a line on whether a lesion in a real frame helps more than a whole image
    (:func:`_inpainting_lines`), and a table of every contrast on its metric (mIoU without one), largest difference
    first, saying which are distinguishable from noise. Per metric (mDice, mIoU): a table of rows arch × policy ×
    ratio with each test set, ``mean`` (over test sets, per seed: the paper's headline) and ``overall``
    (image-weighted, pooled); then the paired
    differences per seed against ``real`` and against the size-matched control at the same ratio (the policy's
    registry entry's ``control``) with their intervals; then the training budget, the fidelity guard's rejections, the
    published anchors, whether the samples follow their masks, the notes on undefined measures (under their own
    heading) and the protocol paragraph (:func:`hardgen.report.run_text.protocol_paragraph`).

    Cells are ``mean ± sd`` over seeds with the sample standard deviation (ddof=1); with a single seed the sd is
    undefined and the cell shows the mean alone. Values are fractions (0–1), like the published anchors.
    """
    long_df, anchors, contrasts = tables.long, tables.anchors, tables.contrasts
    missing = [c for c in BENCHMARK_COLUMNS if c not in long_df.columns]
    if missing:
        raise DataError(f"benchmark table lacks columns {missing}")
    testsets = (list(options.testsets) if options.testsets is not None
                else sorted(set(long_df["testset"]) - {OVERALL}))
    protocol, notes = options.protocol, list(options.notes)
    lines = ["# Segmentation benchmark", ""]
    if options.run is not None:
        protocol = options.run.protocol
        lines += [run_paragraph(options.run), ""]
    if options.published is not None:
        reproduction = (tables.reproduction if tables.reproduction is not None
                        else pd.DataFrame(columns=repro.REPRODUCTION_COLUMNS))
        lines += [" ".join(repro.reproduction_sentences(reproduction, options.published, options.tolerance)), ""]
    if options.demo:
        lines += [DEMO_NOTE, ""]
    lines += infeasible_lines(tables.infeasible)
    if contrasts is not None:
        lines += _contrast_lines(contrasts, options.primary)
    lines += _score_tables(long_df, testsets)
    undefined_hd95 = _hd95_undefined_rows(long_df)
    if undefined_hd95:
        lines += ["", *_hd95_table(undefined_hd95)]
        notes = [*notes, f"HD95: undefined for some test images in {len(undefined_hd95)} run(s) (an empty "
                         "prediction or ground truth); the table under the mIoU table counts them."]
    lines += _paired_lines(paired_differences(long_df, testsets=testsets), _intervals_by_contrast(contrasts))
    if tables.runs is not None and not tables.runs.empty:
        lines += ["## Training budget", "", *_budget_lines(tables.runs), ""]
    lines += _fidelity_lines(tables.fidelity)
    if anchors is not None:
        lines += _anchor_lines(anchors, testsets)
    if options.mask_following:
        lines += ["## Do the samples follow their masks?", "",
                  " ".join(options.mask_following) + " (`mask_following.csv`: each measure's ratio is the samples' gap "
                  "between their own and a shuffled mask, relative to the real images' same gap.)", ""]
    if notes:
        lines += ["## Measures not defined on this data", "", *[f"- {note}" for note in notes], ""]
    lines += [protocol_paragraph(protocol, anchors=anchors is not None), ""]
    return "\n".join(lines)


def _intervals_by_contrast(contrasts: pd.DataFrame | None) -> dict[tuple, pd.Series]:
    """``{(arch, policy, ratio, versus, metric): contrasts.csv row}`` (none without a contrast table)."""
    if contrasts is None:
        return {}
    return {(row["arch"], row["policy"], float(row["ratio"]), row["versus"], row["metric"]): row
            for _, row in contrasts.iterrows()}


#: The metric of benchmark.md's table of contrasts without ``report.primary_contrast`` (the scarcity curve's too).
NOISE_METRIC = "mIoU"


def _contrast_lines(contrasts: pd.DataFrame, primary: Mapping[str, object] | None) -> list[str]:
    """The primary contrast's table (with ``primary``) and the table of which differences are told from noise
    (:func:`_noise_lines`, on the primary contrast's metric)."""
    lines: list[str] = []
    if primary:
        lines += ["## Primary contrast", ""]
        lines.append(f"The question this run asks: `{primary['policy']}` − `{primary['versus']}` at ratio "
                     f"{ratio_label(float(primary['ratio']))}, {primary['metric']} as the mean over the test "
                     "sets, paired by arch and seed (`report.primary_contrast`).")
        lines.append("")
        lines.append("| arch | n | method | Δ | 95 % interval | excludes 0 |")
        lines.append("|---|---:|---|---:|---|---|")
        for _, row in contrast_lib.primary_rows(contrasts, primary).iterrows():
            excludes = contrast_lib.excludes_zero(row.to_frame().T).iloc[0]
            lines.append(f"| {row['arch']} | {row['n']} | {row['method']} | {row['mean_diff']:+.3f} | "
                         f"{_interval(row)} | {'yes' if excludes else 'no'} |")
        lines.append("")
    metric = str(primary["metric"]) if primary else NOISE_METRIC
    lines += _inpainting_lines(contrasts, metric)
    lines += ["## Which differences can be told from noise?", ""]
    return [*lines, *_noise_lines(contrasts, metric, bool(primary))]


def _inpainting_lines(contrasts: pd.DataFrame, metric: str) -> list[str]:
    """The inpainting variants' question, one line: each every-sample policy of a variant that draws into real frames
    against its registry control, the whole images of the same LoRA at the same count (``hard_inpaint`` − ``hard``,
    ``inpaint`` − ``plain``), on ``metric``, with its interval and what it says; none without such a contrast."""
    pairs = {(p.name, p.control) for p in registry.POLICIES.values()
             if p.pool == "every" and p.control is not None and registry.variant(p.source).inpaints}
    rows = contrasts[(contrasts["metric"] == metric)
                     & np.array([(p, v) in pairs for p, v in zip(contrasts["policy"], contrasts["versus"])], bool)]
    if rows.empty:
        return []
    rank = {p: i for i, p in enumerate(in_display_order(rows["policy"], POLICY_ORDER))}
    rows = rows.assign(_rank=rows["policy"].map(rank)).sort_values(["_rank", "arch", "ratio"], kind="stable")

    def verdict(row: pd.Series) -> str:
        if contrast_lib.undefined(row.to_frame().T).iloc[0]:
            return "undefined"
        if row["ci_low"] > 0:
            return "the real frame helps more"
        if row["ci_high"] < 0:
            return "the whole image helps more"
        return "not told from noise"

    told = "; ".join(f"{contrast_lib.describe(row)}: {verdict(row)}" for _, row in rows.iterrows())
    return ["## Lesions in real frames", "",
            f"Does a lesion drawn into a real frame help more than a whole generated image of the same LoRA, at the "
            f"same count (`hard_inpaint` − `hard`: a hard lesion; `inpaint` − `plain`: a plain one)? {metric} as the "
            f"mean over the test sets: {told}.", ""]


def _noise_lines(contrasts: pd.DataFrame, metric: str, from_primary: bool) -> list[str]:
    """Every contrast on ``metric`` (the mean over the test sets; ``from_primary``: it is
    ``report.primary_contrast.metric``, else :data:`NOISE_METRIC`) as one table row (arch, policy, vs, ratio, n, method,
    Δ, 95 % interval, whether it excludes 0: told from noise), the largest |Δ| first (ties in display order), the
    undefined contrasts (n 0, NaN) last with the reason below; then the sentence pointing to ``contrasts.csv`` for
    every metric. Without a contrast on ``metric``, or with every one undefined, the sentences of
    :func:`hardgen.evaluation.contrasts.noise_sentences` instead of the table (and no pointer without any contrast)."""
    where = ("The full list, every metric (each also pooled over all test images: `@overall`), stays in "
             "`results/tables/contrasts.csv`.")
    rows = contrasts[contrasts["metric"] == metric]
    if rows.empty or contrast_lib.undefined(rows).all():
        return [" ".join([*contrast_lib.noise_sentences(contrasts, [metric]), *([] if contrasts.empty else [where])]),
                ""]
    policy_rank = {p: i for i, p in enumerate(in_display_order(rows["policy"], POLICY_ORDER))}
    versus_rank = {p: i for i, p in enumerate(in_display_order(rows["versus"], POLICY_ORDER))}
    rows = rows.assign(_policy=rows["policy"].map(policy_rank), _versus=rows["versus"].map(versus_rank))
    rows = rows.sort_values(["arch", "_policy", "ratio", "_versus"], kind="stable")
    missing = contrast_lib.undefined(rows)
    defined = rows[~missing].assign(_size=rows.loc[~missing, "mean_diff"].abs())
    defined = defined.sort_values("_size", ascending=False, kind="stable")
    distinct = contrast_lib.excludes_zero(defined)
    methods = set(defined["method"])
    why = ("`report.primary_contrast.metric`" if from_primary
           else f"{NOISE_METRIC}: no `report.primary_contrast`")
    lines = [f"Every contrast on {metric}, the mean over the test sets ({why}): Δ = policy − vs, paired by arch and "
             f"seed, the largest |Δ| first. It can be told from {contrast_lib.noise_name(methods)} when its 95 % "
             f"interval excludes 0: {int(distinct.sum())} of {len(defined)} can. {where}", ""]
    lines.append("| arch | policy | vs | ratio | n | method | Δ | 95 % interval | excludes 0 |")
    lines.append("|---|---|---|---:|---:|---|---:|---|---|")
    for (_, row), excludes in zip(defined.iterrows(), distinct):
        lines.append(f"| {row['arch']} | {row['policy']} | {row['versus']} | {ratio_label(float(row['ratio']))} | "
                     f"{row['n']} | {row['method']} | {row['mean_diff']:+.3f} | {_interval(row)} | "
                     f"{'yes' if excludes else 'no'} |")
    for _, row in rows[missing].iterrows():
        lines.append(f"| {row['arch']} | {row['policy']} | {row['versus']} | {ratio_label(float(row['ratio']))} | "
                     f"{row['n']} | {row['method']} | – | undefined | – |")
    lines.append("")
    if missing.any():
        lines += [f"The last {int(missing.sum())} row{'s are' if missing.sum() != 1 else ' is'} undefined (n = 0): "
                  "no test image has a value in both runs.", ""]
    if contrast_lib.BOOTSTRAP_IMAGES in methods:
        lines += [contrast_lib.BOOTSTRAP_CAVEAT, ""]
    return lines


def _score_tables(long_df: pd.DataFrame, testsets: Sequence[str]) -> list[str]:
    """Per metric (mDice, mIoU): a table of rows arch × policy × ratio with each test set, ``mean`` and ``overall``,
    then the sentence on what the cells are."""
    summary = benchmark_summary(long_df, testsets=testsets)
    n_seeds = long_df.groupby(["arch", "policy", "ratio"])["seed"].nunique()
    lines: list[str] = []
    for metric in MARKDOWN_METRICS:
        rows = summary[summary["metric"] == metric]
        lines += [f"## {metric}", ""]
        if rows.empty:
            lines += [f"No {metric} rows in the evaluation tables.", ""]
            continue
        columns = in_display_order([t for t in set(long_df["testset"]) if t != OVERALL and t in rows.columns],
                                   testsets)
        header = ["arch", "policy", "ratio", "seeds", *columns, "mean", "overall"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(columns) + 4)) + "|")
        for arch in in_display_order(rows["arch"], []):
            for policy in in_display_order(rows.loc[rows["arch"] == arch, "policy"], POLICY_ORDER):
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
    return lines


def _paired_lines(diffs: pd.DataFrame, interval_of: Mapping[tuple, pd.Series]) -> list[str]:
    """The section on the paired differences per seed (:func:`hardgen.report.summary.paired_differences`), each with
    the interval of its Δ mean from ``interval_of`` (:func:`_intervals_by_contrast`)."""
    lines = ["", "## Paired differences per seed", ""]
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
        return [*lines, "No pairs (the benchmark has no `real` policy or controls for the same arch and seed).", ""]
    lines.append("| metric | arch | policy | ratio | vs | seeds | Δ mean | Δ overall | 95 % (mean) |")
    lines.append("|---|---|---|---:|---|---:|---:|---:|---|")
    for metric in MARKDOWN_METRICS:
        per_metric = diffs[diffs["metric"] == metric]
        for arch in in_display_order(per_metric["arch"], []):
            per_arch = per_metric[per_metric["arch"] == arch]
            for policy in in_display_order(per_arch["policy"], POLICY_ORDER):
                per_policy = per_arch[per_arch["policy"] == policy]
                for ratio in sorted(per_policy["ratio"].unique()):
                    per_ratio = per_policy[per_policy["ratio"] == ratio]
                    for reference in in_display_order(per_ratio["reference"], POLICY_ORDER):
                        pair = per_ratio[per_ratio["reference"] == reference]
                        found = interval_of.get((arch, policy, float(ratio), reference, metric))
                        lines.append(
                            f"| {metric} | {arch} | {policy} | {ratio_label(ratio)} | {reference} | "
                            f"{pair['seed'].nunique()} | {_mean_sd(pair['d_mean'], signed=True)} | "
                            f"{_mean_sd(pair['d_overall'], signed=True)} | "
                            f"{'–' if found is None else _interval(found)} |"
                        )
    return [*lines, ""]


def _fidelity_lines(fidelity_df: pd.DataFrame | None) -> list[str]:
    """The fidelity guard's section: what it rejects per variant (none without the guard's table)."""
    if fidelity_df is None or fidelity_df.empty:
        return []
    threshold = fidelity_df["min_fidelity"].iloc[0] if "min_fidelity" in fidelity_df.columns else None
    judges = sorted({j for v in fidelity_df.get("judges", pd.Series(dtype=str)).dropna()
                     for j in str(v).split(";")})
    lines = ["## Fidelity guard", ""]
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
    return lines
