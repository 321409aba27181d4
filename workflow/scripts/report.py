"""Snakemake wrapper for rule report: benchmark, runs, hardness and transfer tables, plots, timings and costs."""

from pathlib import Path

from hardgen.core.io import read_keyed_losses, write_csv
from hardgen.core.logging_utils import stage_logging
from hardgen.report.run_records import read_run_records
from hardgen.report.run_text import RunDescription, undefined_notes
from hardgen.report.timings import plot_timings, timings_table, variant_cost
from hardgen.report.write_report import (
    ReportInputs,
    ReportOptions,
    ReportSettings,
    write_report,
)

with stage_logging(snakemake.log[0]) as log:
    inp, variants = snakemake.input, list(snakemake.params.variants)
    # every input is keyed by what the rule built it from, never parsed back from its path: the run records carry
    # their run's keys and come in the order of the evaluation tables (common.smk's run_paths builds both)
    records = read_run_records(inp.runs)
    evals = {(r["arch"], r["policy"], float(r["ratio"]), int(r["seed"])): path
             for r, path in zip(records, inp.evals, strict=True)}
    eval_images = dict(zip(evals, inp.eval_images, strict=True))  # per-image tables, in the same run order
    # segment.full_data_baseline: the anchored archs' real-only runs on every image, keyed by their own records
    full_records = read_run_records(inp.full_runs)
    full_evals = {(r["arch"], r["policy"], float(r["ratio"]), int(r["seed"])): path
                  for r, path in zip(full_records, inp.full_evals, strict=True)}
    # the feedback judge's losses, one table per variant: {<arch>/seed-<s>: every variant} holds that one judge
    (judge_losses,) = read_keyed_losses(inp.judge_loss).values()
    # per-rule times of this run, from the benchmark files of every job upstream of the report
    timings = timings_table(Path(snakemake.output.timings).parents[1] / "benchmarks")
    # what each variant cost to make: its training (plain LoRA + own fine-tuning) next to its generation
    costs = variant_cost(timings, list(snakemake.params.variants), judge_job=snakemake.params.judge_job)
    inputs = ReportInputs(
        eval_csvs=evals,
        score_csvs=list(inp.scores),
        generated_manifests=dict(zip(variants, inp.generated, strict=True)),
        data_manifest_csv=inp.manifest,
        run_records=records,
        sample_loss_csvs=read_keyed_losses(inp.sample_losses),  # {<arch>/seed-<s>: every variant}
        conditions_csv=inp.conditions,
        train_logs=dict(zip(snakemake.params.loras, inp.train_logs, strict=True)),
        judge_loss_csv=judge_losses,
        feature_files=dict(zip(["real", *variants], inp.features, strict=True)),
        fidelity_csvs=dict(zip(variants, inp.fidelity, strict=True)),  # fidelity.csv's judges column
        eval_images=eval_images,
        anchors_csv=inp.anchors[0] if inp.anchors else None,
        mask_following_csv=inp.mask_following,
        full_data_evals=full_evals,
        full_data_records=full_records,
        validation_csvs=dict(zip(snakemake.params.loras, inp.validation, strict=True)),
    )
    options = ReportOptions(
        loss_backbones=list(snakemake.params.loss_backbones),
        testsets=list(snakemake.params.testsets),  # data.testsets: names and display order
        demo=bool(snakemake.params.demo),
        min_fidelity=snakemake.params.min_fidelity,  # the fidelity guard's table (results/tables/fidelity.csv)
        published=dict(snakemake.params.published),
        reproduce_tolerance=snakemake.params.reproduce_tolerance,
        primary_contrast=snakemake.params.primary_contrast,
        run=RunDescription(**snakemake.params.run),
        notes=undefined_notes(variant_cost=costs),
    )
    written = write_report(ReportSettings(inputs, options, tables_dir=Path(snakemake.output.benchmark).parent,
                                          plots_dir=Path(snakemake.output.plots)))
    log.info("wrote %s", sorted(str(p) for p in written.values()))
    write_csv(snakemake.output.timings, timings)
    plot_timings(timings, Path(snakemake.output.plots) / "timings.png")
    log.info("timings: %d jobs, %.0f s of job time", len(timings), timings["s"].sum())
    write_csv(snakemake.output.variant_cost, costs)
    log.info("variant cost (s): %s",
             costs.set_index("variant")[["training_s", "generation_s"]].round(1).to_dict("index"))
