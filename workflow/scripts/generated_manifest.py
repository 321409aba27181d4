"""Snakemake wrapper for rule generated_manifest: merge one variant's shard manifests (no torch: hardgen.generator.shards)."""

from hardgen.core.logging_utils import stage_logging
from hardgen.generator.shards import merge_shards

with stage_logging(snakemake.log[0]) as log:
    merged = merge_shards(snakemake.input.shards, snakemake.output[0], plan=snakemake.input.plan)
    log.info("%s: %d generated samples", snakemake.wildcards.variant, len(merged))
