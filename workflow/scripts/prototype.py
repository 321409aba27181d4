"""Snakemake wrapper for rule prototype: mean feature of real polyp crops under one backbone."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.data import load_manifest
    from hardgen.features import BackboneSpec, compute_prototype

    key = snakemake.wildcards.backbone
    summary = compute_prototype(
        load_manifest(snakemake.input.manifest),
        BackboneSpec.from_config(key, snakemake.params.spec),
        snakemake.output[0],
        pad=snakemake.params.pad,
        device=configure_torch(snakemake.threads),
        config_key=key,
        resolution=snakemake.params.resolution,
    )
    log.info("prototype %s: %s", key, summary)
