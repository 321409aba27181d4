"""Snakemake wrapper for rule mask_following: do the samples of each variant follow their masks? The cue measure
(red chromaticity or the grey level) and the real-only judges' Dice (params.specs, in the order of input.judges)."""

from pathlib import Path

from hardgen.core.devices import claim_gpus, configure_torch
from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.core.io import path_list, write_table
    from hardgen.scoring.mask_following import (
        COLUMNS,
        load_judge_predictors,
        mask_following_from_files,
        mask_following_sentences,
    )

    inp, params = snakemake.input, snakemake.params
    device = configure_torch(snakemake.threads)
    judges = load_judge_predictors(dict(params.specs), path_list(inp.judges), size=params.size, device=device)
    table = mask_following_from_files(
        inp.conditions,
        inp.manifest,
        {Path(p).parent.name: p for p in path_list(inp.generated)},
        size=params.resolution,
        seed=params.seed,
        judges=judges,
    )
    write_table(snakemake.output[0], table, COLUMNS, "mask-following table")
    log.info("mask following:\n%s", table.drop(columns="reason").round(4).to_string(index=False))
    for sentence in mask_following_sentences(table):
        log.info("%s", sentence)
