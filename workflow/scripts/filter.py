"""Snakemake wrapper for rule filter: the training subset of one policy at one ratio for one segmenter seed."""

from hardgen.filter import build_subset, real_count, subset_seed
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    policy, segmenter_seed = snakemake.wildcards.policy, int(snakemake.wildcards.seed)
    ratio = float(snakemake.wildcards.ratio)
    draw_seed = subset_seed(snakemake.params.base_seed, segmenter_seed)
    n_real = real_count(snakemake.input.manifest)
    subset = build_subset(
        policy,
        score_csvs=snakemake.input.scores,
        generated_csvs=snakemake.input.generated,
        out_path=snakemake.output[0],
        ratio=ratio,
        n_real=n_real,
        band=snakemake.params.band,
        score_backbone=snakemake.params.score_backbone,
        min_fidelity=snakemake.params.min_fidelity,
        seed=draw_seed,
    )
    log.info("policy %s, ratio %s (%d real images), segmenter seed %d (draw seed %d): %d synthetic samples",
             policy, snakemake.wildcards.ratio, n_real, segmenter_seed, draw_seed, len(subset))
