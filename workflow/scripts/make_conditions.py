"""Snakemake wrapper for rule make_conditions: condition images for training masks and new layouts."""

from pathlib import Path

from hardgen.core.logging_utils import stage_logging
from hardgen.data.conditioning import make_conditions, write_conditions_table
from hardgen.data.manifest import load_manifest

with stage_logging(snakemake.log[0]) as log:
    p = snakemake.params
    table = make_conditions(
        load_manifest(snakemake.input.manifest),
        out_dir=Path(snakemake.output.table).parent,
        kind=p.kind,
        layouts_per_mask=p.layouts_per_mask,
        size=p.size,
        seed=p.seed,
        low=p.low,
        high=p.high,
    )
    write_conditions_table(table, snakemake.output.table)
    log.info("conditions: %s", table["kind"].value_counts().to_dict())
