"""Snakemake wrapper for rule models_table: results/tables/models.csv, every model the run builds (the base's parts,
each backbone, each segmenter) with its parameter count and dtype (hardgen.report.models_table)."""

from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from hardgen.core.io import write_table
    from hardgen.report.models_table import COLUMNS, base_source, models_table

    params = snakemake.params
    table = models_table(params.base, base_source(params.base, params.tiny_config), dict(params.backbones),
                         dict(params.archs))
    write_table(snakemake.output[0], table, COLUMNS, "models table")
    log.info("models:\n%s", table.to_string(index=False))
