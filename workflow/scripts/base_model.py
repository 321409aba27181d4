"""Snakemake wrapper for rule base_model: build the tiny random-init Stable Diffusion in diffusers format."""

from hardgen.core.logging_utils import stage_logging
from hardgen.models.base_model import build_tiny_sd

with stage_logging(snakemake.log[0]) as log:
    build_tiny_sd(snakemake.params.config_dir, snakemake.output[0], seed=snakemake.params.seed)
    log.info("tiny Stable Diffusion saved to %s", snakemake.output[0])
