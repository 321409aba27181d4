"""Snakemake wrapper for rule mask_following: do the samples of each variant follow their masks?"""

from pathlib import Path

from hardgen.io import write_table
from hardgen.logging_utils import stage_logging
from hardgen.mask_following import COLUMNS, mask_following_from_files

with stage_logging(snakemake.log[0]) as log:
    inp = snakemake.input
    table = mask_following_from_files(
        inp.conditions,
        inp.manifest,
        {Path(p).parent.name: p for p in inp.generated},
        size=snakemake.params.resolution,
        seed=snakemake.params.seed,
    )
    write_table(snakemake.output[0], table, COLUMNS, "mask-following table")
    log.info("mask following:\n%s", table.round(4).to_string(index=False))
