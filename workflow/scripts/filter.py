"""Snakemake wrapper for rule filter: the training subset of one policy for one segmenter seed."""

from hardgen.filter import build_subset, subset_seed
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    policy, segmenter_seed = snakemake.wildcards.policy, int(snakemake.wildcards.seed)
    draw_seed = subset_seed(snakemake.params.base_seed, segmenter_seed)
    subset = build_subset(
        policy,
        score_csvs=snakemake.input.scores,
        generated_csvs=snakemake.input.generated,
        out_path=snakemake.output[0],
        band=snakemake.params.band,
        score_backbone=snakemake.params.score_backbone,
        seed=draw_seed,
    )
    log.info("policy %s, segmenter seed %d (draw seed %d): %d synthetic samples", policy, segmenter_seed,
             draw_seed, len(subset))
