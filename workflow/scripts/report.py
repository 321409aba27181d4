"""Snakemake wrapper for rule report: benchmark, runs and hardness tables, plots."""

from pathlib import Path

from hardgen.logging_utils import stage_logging
from hardgen.report import write_report

with stage_logging(snakemake.log[0]) as log:
    inp = snakemake.input
    written = write_report(
        eval_csvs=inp.evals,
        score_csvs=inp.scores,
        generated_manifests={Path(p).parent.name: p for p in inp.generated},
        conditions_csv=inp.conditions,
        data_manifest_csv=inp.manifest,
        tables_dir=Path(snakemake.output.benchmark).parent,
        plots_dir=snakemake.output.plots,
        loss_backbones=snakemake.params.loss_backbones,
        run_records=list(inp.runs),
        sample_loss_csvs=list(inp.sample_losses),
        demo=bool(snakemake.params.demo),
    )
    log.info("wrote %s", sorted(str(p) for p in written.values()))
