"""Snakemake wrapper for rule score: each sample's prototype discrepancy under every backbone (and its features)."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.features import BackboneSpec
    from hardgen.score import score_variant

    variant = snakemake.wildcards.scored
    keys = list(snakemake.params.backbones)
    scores = score_variant(
        snakemake.input.manifest if variant == "real" else snakemake.input.samples,
        backbones={k: BackboneSpec.from_config(k, snakemake.params.backbones[k]) for k in keys},
        prototype_paths=dict(zip(keys, snakemake.input.prototypes, strict=True)),
        variant=variant,
        out_path=snakemake.output.scores,
        pad=snakemake.params.pad,
        device=configure_torch(snakemake.threads),
        resolution=snakemake.params.resolution,
        features_path=snakemake.output.features,
        fidelity_path=snakemake.input.fidelity or None,  # generated variants: the fidelity guard's columns
    )
    log.info("%s: mean z per backbone %s", variant, scores.groupby("backbone")["z"].mean().round(3).to_dict())
