"""Snakemake wrapper for rules fidelity_reference (the real training images' feature separation, the calibration)
and fidelity (every sample of one generated variant graded: real-only segmenters' Dice + calibrated separation)."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from pathlib import Path

    from hardgen.features import BackboneSpec, load_backbone
    from hardgen.fidelity import build_fidelity, build_reference

    key = snakemake.params.key
    backbone = load_backbone(BackboneSpec.from_config(key, snakemake.params.backbone),
                             configure_torch(snakemake.threads), config_key=key)
    if not hasattr(snakemake.input, "reference"):  # rule fidelity_reference
        table = build_reference(snakemake.input.manifest, backbone, snakemake.output[0],
                                resolution=snakemake.params.resolution)
        log.info("real training images: %d separations under %s, median %.4g", len(table), key,
                 table["separation"].median())
    else:
        losses = {f"{Path(p).parent.parent.name}/{Path(p).parent.name}": p for p in snakemake.input.sample_losses}
        table = build_fidelity(snakemake.input.generated, losses, snakemake.input.reference, backbone,
                               snakemake.output[0], resolution=snakemake.params.resolution)
        log.info("%s: %d samples graded by %d segmenters; mean fidelity %.3f (Dice %.3f, separation %.3f)",
                 snakemake.wildcards.variant, len(table), table["judges"].iloc[0], table["fidelity"].mean(),
                 table["fidelity_dice"].mean(), table["fidelity_separation"].mean())
