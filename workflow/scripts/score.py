"""Snakemake wrapper for rule score: the fidelity guard of one set (real: its calibration; a generated variant: every
sample graded) and each sample's prototype discrepancy under every backbone (and its features), in one job."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from pathlib import Path

    from hardgen.features import BackboneSpec
    from hardgen.score import score_with_fidelity

    variant = snakemake.wildcards.scored
    keys = list(snakemake.params.backbones)
    fidelity_key = snakemake.params.fidelity_backbone
    real = variant == "real"
    scores, fidelity = score_with_fidelity(
        snakemake.input.manifest if real else snakemake.input.samples,
        backbones={k: BackboneSpec.from_config(k, snakemake.params.backbones[k]) for k in keys},
        prototype_paths=dict(zip(keys, snakemake.input.prototypes, strict=True)),
        variant=variant,
        out_path=snakemake.output.scores,
        fidelity_key=fidelity_key,
        fidelity_out=snakemake.output.fidelity,
        # generated variants: the real-only segmenters' grades (name <arch>/seed-<s>) and the real calibration
        sample_loss_csvs=None if real else {
            f"{Path(p).parent.parent.name}/{Path(p).parent.name}": p for p in snakemake.input.sample_losses
        },
        reference_csv=None if real else snakemake.input.reference,
        pad=snakemake.params.pad,
        device=configure_torch(snakemake.threads),
        resolution=snakemake.params.resolution,
        features_path=snakemake.output.features,
    )
    if real:
        log.info("real training images: %d separations under %s, median %.4g", len(fidelity), fidelity_key,
                 fidelity["separation"].median())
    else:
        log.info("%s: %d samples graded by %d segmenters; mean fidelity %.3f (Dice %.3f, separation %.3f)",
                 variant, len(fidelity), fidelity["judges"].iloc[0], fidelity["fidelity"].mean(),
                 fidelity["fidelity_dice"].mean(), fidelity["fidelity_separation"].mean())
    log.info("%s: mean z per backbone %s", variant, scores.groupby("backbone")["z"].mean().round(3).to_dict())
