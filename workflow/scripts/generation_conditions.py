"""Snakemake wrapper for rule generation_conditions: the conditions refitted as generation.condition_fit says."""

from pathlib import Path

from hardgen.core.logging_utils import stage_logging
from hardgen.data.conditioning import generation_conditions, write_conditions_table

with stage_logging(snakemake.log[0]) as log:
    p = snakemake.params
    table = generation_conditions(
        snakemake.input.conditions,
        snakemake.input.manifest,
        out_dir=Path(snakemake.output.table).parent,
        fit=p.fit,
        kind=p.kind,
        size=p.size,
        low=p.low,
        high=p.high,
    )
    write_conditions_table(table, snakemake.output.table)
    log.info("generation conditions: %d rows (%s)", len(table), p.fit)
