"""Snakemake wrapper for rule filter: the training subset of one policy."""

from hardgen.filter import build_subset
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    subset = build_subset(
        snakemake.wildcards.policy,
        score_csvs=snakemake.input.scores,
        generated_csvs=snakemake.input.generated,
        out_path=snakemake.output[0],
        band=snakemake.params.band,
        score_backbone=snakemake.params.score_backbone,
        seed=snakemake.params.seed,
    )
    log.info("policy %s: %d synthetic samples", snakemake.wildcards.policy, len(subset))
