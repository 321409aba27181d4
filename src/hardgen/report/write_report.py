"""The report of a hardgen run: every table under ``results/tables`` and every plot under ``results/plots``.

:func:`write_report` is the one entry (rule ``report``, ``workflow/scripts/report.py``); it reads the CSV artifacts of
earlier stages (see docs/architecture.md) named by a :class:`ReportSettings` and writes each file atomically, through
the modules of this folder: :mod:`~hardgen.report.summary` (benchmark.csv), :mod:`~hardgen.report.run_records`,
:mod:`~hardgen.report.hardness`, :mod:`~hardgen.report.markdown` (benchmark.md), :mod:`~hardgen.report.plots`,
:mod:`~hardgen.report.transfer` and :mod:`~hardgen.report.gallery`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hardgen.core import registry
from hardgen.core.io import DataError, table_or_csv, write_csv, write_text
from hardgen.evaluation import contrasts as contrast_lib
from hardgen.evaluation import reproduction as repro
from hardgen.report import gallery, transfer
from hardgen.report.hardness import hardness_table, hardness_transfer
from hardgen.report.markdown import BenchmarkTables, MarkdownOptions, markdown_report
from hardgen.report.plots import (
    pairs_from_generated,
    plot_benchmark,
    plot_grid,
    plot_histograms,
    plot_ratio,
    plot_training_loss,
    real_pairs_from,
)
from hardgen.report.run_records import infeasible_table, read_run_records, runs_table
from hardgen.report.run_text import RunDescription, undefined_notes
from hardgen.report.summary import (
    OVERALL,
    EvalKey,
    benchmark_long,
    eval_mapping,
    paired_differences,
)
from hardgen.report.tables import read_scores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportInputs:
    """What a report reads, every input keyed by the caller (names are never read off paths).

    ``eval_csvs``: ``{(arch, policy, ratio, seed): evaluation CSV}`` (columns ``testset, metric, value``);
    ``score_csvs``: the score tables; ``generated_manifests``: ``{variant: generation manifest}``;
    ``data_manifest_csv``: the data manifest; ``run_records``: the benchmark runs' ``run.json`` records (paths or
    dicts; skipped runs, ``filter.on_short_pool: skip``, go to ``infeasible.csv`` and benchmark.md's section on unfilled
    subsets); ``sample_loss_csvs``: per-sample losses of the real-trained benchmark segmenters
    (``{"<arch>/seed-<s>": path or table}``); ``conditions_csv``: the conditions table (lets the grid show each
    condition's real image; without it only sample ids that are data-manifest ids get one); ``train_logs``: the
    Control-LoRA training logs (``{variant: path}``); ``judge_loss_csv``: the feedback judge's per-sample loss (a
    source of the transfer matrix); ``feature_files``: ``{scored set: path}``, ``real`` included (``features.png``);
    ``fidelity_csvs``: each generated variant's ``results/fidelity/<variant>.csv`` (names the guard's judges);
    ``eval_images``: the per-image tables, keyed like ``eval_csvs`` (single-seed contrasts); ``anchors_csv``: the
    published anchors (config ``report.anchors``); ``mask_following_csv``: ``mask_following.csv``;
    ``full_data_evals`` / ``full_data_records``: ``segment.full_data_baseline``'s real-only runs on every training
    image (evaluation CSVs keyed like ``eval_csvs``, and their ``run.json`` records): the reproduction table's baseline
    of their archs, never a benchmark run; ``validation_csvs``: each LoRA's ``validation.csv`` (``{variant: path}``,
    its validation grids beside it: :mod:`hardgen.report.validation`).
    """

    eval_csvs: Mapping[EvalKey, str | Path]
    score_csvs: Sequence[str | Path]
    generated_manifests: Mapping[str, str | Path]
    data_manifest_csv: str | Path
    run_records: Sequence[str | Path | Mapping[str, object]] = ()
    sample_loss_csvs: Mapping[str, str | Path | pd.DataFrame] = field(default_factory=dict)
    conditions_csv: str | Path | None = None
    train_logs: Mapping[str, str | Path] = field(default_factory=dict)
    judge_loss_csv: str | Path | pd.DataFrame | None = None
    feature_files: Mapping[str, str | Path] = field(default_factory=dict)
    fidelity_csvs: Mapping[str, str | Path] = field(default_factory=dict)
    eval_images: Mapping[EvalKey, str | Path] = field(default_factory=dict)
    anchors_csv: str | Path | None = None
    mask_following_csv: str | Path | pd.DataFrame | None = None
    full_data_evals: Mapping[EvalKey, str | Path] = field(default_factory=dict)
    full_data_records: Sequence[str | Path | Mapping[str, object]] = ()
    validation_csvs: Mapping[str, str | Path] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportOptions:
    """What a report says about its inputs, from the config.

    ``loss_backbones``: ``hard.loss_backbones``; ``testsets``: ``data.testsets`` (orders the test sets everywhere; any
    number, one included; None: alphabetical); ``demo``: adds the note that demo numbers are noise by design;
    ``grid_rows``: rows of ``grid.png``; ``min_fidelity``: ``filter.min_fidelity`` (None: no fidelity guard, no
    ``fidelity.csv``); ``published``: ``{arch: segment.archs.<arch>.published}``; ``reproduce_tolerance``:
    ``report.reproduce_tolerance``; ``primary_contrast``: ``report.primary_contrast``; ``run``: what was run and its
    protocol (:class:`hardgen.report.run_text.RunDescription`), at the top and bottom of benchmark.md; ``notes``:
    sentences on measures this data leaves undefined, before those of the tables written here.
    """

    loss_backbones: Sequence[str]
    testsets: Sequence[str] | None = None
    demo: bool = False
    grid_rows: int = 6
    min_fidelity: float | None = None
    published: Mapping[str, str | None] = field(default_factory=dict)
    reproduce_tolerance: float = repro.DEFAULT_TOLERANCE
    primary_contrast: Mapping[str, object] | None = None
    run: RunDescription | None = None
    notes: Sequence[str] = ()


@dataclass(frozen=True)
class ReportSettings:
    """One report: what it reads (``inputs``), what it says (``options``) and where it writes its tables and plots."""

    inputs: ReportInputs
    options: ReportOptions
    tables_dir: Path
    plots_dir: Path


def keyed_paths(paths: Mapping[str, str | Path | pd.DataFrame], what: str) -> dict[str, Path | pd.DataFrame]:
    """``{name: path}`` as given (names are never read off paths: the workflow keys every input)."""
    if not isinstance(paths, Mapping):
        raise TypeError(f"{what}: pass a {{name: path}} mapping (names are not read off paths)")
    return {str(k): v if isinstance(v, pd.DataFrame) else Path(v) for k, v in paths.items()}


def _reproduction_baselines(long: pd.DataFrame, runs: pd.DataFrame,
                             inputs: ReportInputs) -> tuple[pd.DataFrame, dict[str, int]]:
    """The real-only scores and training-set sizes the reproduction table compares: the benchmark's (``long``,
    ``runs``), an arch with full-data baseline runs (``segment.full_data_baseline``) replaced by those."""
    sizes = repro.real_only_sizes(runs)
    if not inputs.full_data_evals:
        return long, sizes
    records = read_run_records(inputs.full_data_records)
    full_long = benchmark_long(inputs.full_data_evals)
    if set(full_long["policy"]) != {"real"}:
        raise DataError(f"full-data baseline runs must be real-only, found policies {sorted(set(full_long['policy']))}")
    full_sizes = repro.real_only_sizes(runs_table(records))
    if set(full_sizes) != set(full_long["arch"]):
        raise DataError(f"full-data baseline runs: records of archs {sorted(full_sizes)}, scores of archs "
                        f"{sorted(set(full_long['arch']))}")
    kept = long[~long["arch"].isin(full_sizes)]
    return pd.concat([kept, full_long], ignore_index=True), {**sizes, **full_sizes}


def write_report(settings: ReportSettings) -> dict[str, Path]:
    """Write every table and plot of the run; returns ``{name: path}`` of what was written.

    Tables (``settings.tables_dir``): ``benchmark.csv`` (long: arch, policy, ratio, seed, testset, metric, value),
    ``benchmark.md`` (:func:`hardgen.report.markdown.markdown_report`), ``runs.csv`` (arch, policy, ratio, seed,
    real_images, synthetic_images, iterations, images_seen), ``infeasible.csv``, ``hardness.csv`` (variant, backbone,
    mean_discrepancy, n, in_loss), ``hardness_transfer.csv`` (backbone, segmenter, variant, spearman,
    partial_spearman, n; header only without sample losses), ``reproduction.csv`` (arch, testset, metric, ours,
    published, diff, n_real, published_n_train, selection: :func:`hardgen.evaluation.reproduction.reproduction_table`
    of the arches of ``published`` against the anchors, ``n_real`` from the runs' records; an arch with full-data
    baseline runs (``inputs.full_data_evals``) is compared through those, the others through their benchmark real-only
    runs; header only without either), ``contrasts.csv`` (:func:`hardgen.evaluation.contrasts.contrast_table`)
    and, with ``min_fidelity``, ``fidelity.csv`` (:func:`hardgen.scoring.fidelity.fidelity_summary`; ``judges`` names
    the guard's judge runs). A measure this data leaves undefined is a marked row, never an error, and benchmark.md
    says so (:func:`hardgen.report.run_text.undefined_notes`); the mask-following table adds its sentences and its
    undefined measures.

    Plots (``settings.plots_dir``): ``grid.png``, ``histograms.png``, ``benchmark.png``, ``ratio.png``
    (:mod:`hardgen.report.plots`), ``training_loss.png`` with training logs; the transfer study and the sample views
    (:mod:`hardgen.report.transfer`, :mod:`hardgen.report.gallery`): ``transfer_matrix.csv`` / ``.png``,
    ``hardest.png``, with inpainting variants ``inpainting.png`` and, with feature files, ``features.png``. With
    validation tables, ``validation.csv`` (every LoRA's, merged: stage, step, metric, value) and, when they have rows,
    ``validation_curves.png`` and ``validation_grids.png`` (:mod:`hardgen.report.validation`).
    """
    inputs, options = settings.inputs, settings.options
    tables_dir, plots_dir = Path(settings.tables_dir), Path(settings.plots_dir)
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
    generated = keyed_paths(inputs.generated_manifests, "generated manifests")
    losses = keyed_paths(inputs.sample_loss_csvs, "sample losses")
    records = read_run_records(inputs.run_records)
    infeasible = infeasible_table(records)
    skipped = [(r["arch"], r["policy"], r["ratio"], r["seed"]) for r in records if r.get("skipped")]
    long = benchmark_long(inputs.eval_csvs, skipped)
    runs = runs_table(records)
    written["infeasible_csv"] = tables_dir / "infeasible.csv"
    write_csv(written["infeasible_csv"], infeasible)
    write_csv(written["benchmark_csv"], long)
    write_csv(written["runs_csv"], runs)
    scores = read_scores(list(inputs.score_csvs))
    fidelity = _fidelity_table(scores, inputs.fidelity_csvs, options.min_fidelity)
    if fidelity is not None:
        written["fidelity_csv"] = tables_dir / "fidelity.csv"
        write_csv(written["fidelity_csv"], fidelity)
    anchors, published = _anchors(inputs.anchors_csv, options.published)
    order = list(options.testsets) if options.testsets is not None else sorted(set(long["testset"]) - {OVERALL})
    no_anchors = pd.DataFrame(columns=repro.ANCHOR_COLUMNS)
    baseline_long, baseline_sizes = _reproduction_baselines(long, runs, inputs)
    reproduction = repro.reproduction_table(baseline_long, anchors if anchors is not None else no_anchors, published,
                                            order, baseline_sizes)
    write_csv(written["reproduction_csv"], reproduction)
    contrasts = contrast_lib.contrast_table(paired_differences(long, testsets=order), order,
                                            eval_mapping(inputs.eval_images))
    write_csv(written["contrasts_csv"], contrasts)
    write_csv(written["hardness_csv"], hardness_table(scores, options.loss_backbones))
    transfer_table = hardness_transfer(scores, losses)
    write_csv(written["hardness_transfer_csv"], transfer_table)
    written["transfer_matrix_csv"] = tables_dir / "transfer_matrix.csv"
    written["transfer_matrix_png"] = plots_dir / "transfer_matrix.png"
    matrix = transfer.transfer_matrix(scores, options.loss_backbones, losses, inputs.judge_loss_csv)
    write_csv(written["transfer_matrix_csv"], matrix)
    notes = [*options.notes, *undefined_notes(contrasts=contrasts, transfer=transfer_table, transfer_matrix=matrix)]
    following, following_notes = _mask_following(inputs.mask_following_csv)
    write_text(written["benchmark_md"], markdown_report(
        BenchmarkTables(long, runs, fidelity=fidelity, anchors=anchors, reproduction=reproduction,
                        contrasts=contrasts, infeasible=infeasible),
        MarkdownOptions(testsets=order, demo=options.demo, published=published if published else None,
                        tolerance=options.reproduce_tolerance, primary=options.primary_contrast, run=options.run,
                        notes=[*notes, *following_notes], mask_following=following)))
    transfer.plot_transfer_matrix(matrix, written["transfer_matrix_png"])
    written.update(_write_plots(settings, generated, scores, long))
    written.update(_write_validation(inputs.validation_csvs, tables_dir, plots_dir))
    log.info("report written: %s", ", ".join(str(p) for p in written.values()))
    return written


def _write_validation(validation_csvs: Mapping[str, str | Path], tables_dir: Path,
                      plots_dir: Path) -> dict[str, Path]:
    """The LoRAs' validation merged into ``validation.csv`` and, when it has rows, its curves and first / last grids;
    nothing without validation tables."""
    if not validation_csvs:
        return {}
    from hardgen.report import validation

    csvs = keyed_paths(validation_csvs, "validation tables")
    table = validation.merge_validation(csvs)
    written = {"validation_csv": tables_dir / "validation.csv"}
    write_csv(written["validation_csv"], table)
    if not table.empty:
        written["validation_curves_png"] = plots_dir / "validation_curves.png"
        validation.plot_validation_curves(table, written["validation_curves_png"])
        written["validation_grids_png"] = plots_dir / "validation_grids.png"
        validation.plot_validation_grids(table, csvs, written["validation_grids_png"])
    return written


def _fidelity_table(scores: pd.DataFrame, fidelity_csvs: Mapping[str, str | Path],
                    min_fidelity: float | None) -> pd.DataFrame | None:
    """``fidelity.csv``'s table (:func:`hardgen.scoring.fidelity.fidelity_summary`); None without the guard."""
    if min_fidelity is None:
        return None
    from hardgen.scoring.fidelity import fidelity_summary, guard_judges

    if not fidelity_csvs:
        raise DataError("fidelity guard: the report needs the variants' fidelity tables "
                        "(results/fidelity/<variant>.csv) to name the guard's judges")
    judges = guard_judges(keyed_paths(fidelity_csvs, "fidelity tables"))
    return fidelity_summary(scores, min_fidelity, judges)


def _anchors(anchors_csv: str | Path | None,
             published: Mapping[str, str | None]) -> tuple[pd.DataFrame | None, dict[str, str | None]]:
    """The published anchors (None without ``report.anchors``) and ``{arch: published model}``; an arch that names a
    published model without anchors is a :class:`DataError`."""
    anchors = repro.load_anchors(anchors_csv) if anchors_csv is not None else None
    published = dict(published or {})
    if anchors is None and any(published.values()):
        raise DataError(f"report.anchors: null, but segment.archs {sorted(a for a, m in published.items() if m)} "
                        "name a published model")
    return anchors, published


def _mask_following(source: str | Path | pd.DataFrame | None) -> tuple[list[str], list[str]]:
    """The mask-following table's sentences (one per measure, in the table's order) and the notes on its measures
    that the real images leave undefined; nothing without the table."""
    if source is None:
        return [], []
    from hardgen.scoring.mask_following import OK, mask_following_sentences

    _, table = table_or_csv(source, "mask-following table")
    following = mask_following_sentences(table)
    real = table[table["variant"] == "real"].set_index("measure")["status"]
    notes = [f"`mask_following.csv`: {sentence}"
             for measure, sentence in zip(table["measure"].unique(), following, strict=True)
             if real.get(measure) != OK]
    return following, notes


def _write_plots(settings: ReportSettings, generated: Mapping[str, Path | pd.DataFrame], scores: pd.DataFrame,
                 long: pd.DataFrame) -> dict[str, Path]:
    """The sample views and the plots of :mod:`hardgen.report.plots` (``generated``: ``{variant: manifest}``); returns
    the ``{name: path}`` of those whose presence depends on the inputs (the others are in :func:`write_report`'s list
    from the start)."""
    inputs, options = settings.inputs, settings.options
    plots_dir = Path(settings.plots_dir)
    written = {"hardest_png": plots_dir / "hardest.png"}
    gallery.plot_hardest(gallery.sample_hardness(scores, options.loss_backbones), generated, written["hardest_png"],
                         options.min_fidelity)
    inpainting = [v for v in generated if v in registry.VARIANTS and registry.VARIANTS[v].inpaints]
    if inpainting:  # the lesions drawn into real frames beside their frame and mask
        written["inpainting_png"] = plots_dir / "inpainting.png"
        gallery.plot_inpainting({v: generated[v] for v in inpainting}, written["inpainting_png"])
    if inputs.feature_files:
        written["features_png"] = plots_dir / "features.png"
        gallery.plot_features(keyed_paths(inputs.feature_files, "feature files"), options.loss_backbones,
                              written["features_png"])
    if inputs.conditions_csv is not None:
        pairs = real_pairs_from(inputs.conditions_csv, inputs.data_manifest_csv)
    else:
        pairs = pairs_from_generated(generated, inputs.data_manifest_csv)
    plot_grid(pairs, generated, plots_dir / "grid.png", n=options.grid_rows)
    plot_histograms(scores, plots_dir / "histograms.png")
    plot_benchmark(long, plots_dir / "benchmark.png")
    plot_ratio(long, plots_dir / "ratio.png")
    if inputs.train_logs:
        written["training_loss_png"] = plots_dir / "training_loss.png"
        plot_training_loss(keyed_paths(inputs.train_logs, "train logs"), written["training_loss_png"])
    return written
