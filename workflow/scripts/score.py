"""Snakemake wrapper for rule score: the fidelity guard of one set (real: its calibration; a generated variant:
every sample graded) and each sample's prototype discrepancy under every backbone (and its features); one set per
job, so a new variant is scored without scoring the others again."""

from hardgen.core.devices import claim_gpus, configure_torch
from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.core.io import path_list
    from hardgen.scoring.features import BackboneSpec, load_backbone
    from hardgen.scoring.score import ScoredSet, ScoringSetup, score_with_fidelity

    sets = list(snakemake.params.sets)
    keys = list(snakemake.params.backbones)
    specs = {k: BackboneSpec.from_config(k, snakemake.params.backbones[k]) for k in keys}
    fidelity_key = snakemake.params.fidelity_backbone
    device = configure_torch(snakemake.threads)
    # one load per backbone for every set of the job (score_with_fidelity checks fidelity_key against the specs)
    extractors = {k: load_backbone(specs[k], device, config_key=k) for k in keys}
    setup = ScoringSetup(specs, dict(zip(keys, snakemake.input.prototypes, strict=True)), fidelity_key,
                         pad=snakemake.params.pad, device=device, resolution=snakemake.params.resolution,
                         extractors=extractors)
    samples = path_list(snakemake.input.samples) if sets != ["real"] else [snakemake.input.manifest]
    outputs = [path_list(snakemake.output[name]) for name in ("scores", "features", "fidelity")]
    for variant, manifest, scores_out, features_out, fidelity_out in zip(sets, samples, *outputs, strict=True):
        real = variant == "real"
        scores, fidelity = score_with_fidelity(setup, ScoredSet(
            manifest, variant, out_path=scores_out, fidelity_out=fidelity_out,
            # generated variants: the real-only judges' grades (name judge/<arch>/seed-<s>, in the order of the
            # rule's sample_losses) and the real calibration
            sample_loss_csvs=None if real else dict(
                zip(snakemake.params.judges, path_list(snakemake.input.sample_losses), strict=True)),
            reference_csv=None if real else snakemake.input.reference,
            features_path=features_out,
        ))
        if real:
            log.info("real training images: %d separations under %s, median %.4g", len(fidelity), fidelity_key,
                     fidelity["separation"].median())
        else:
            log.info("%s: %d samples graded by judges %s; mean fidelity %.3f (Dice %.3f, separation %.3f)",
                     variant, len(fidelity), fidelity["judges"].iloc[0], fidelity["fidelity"].mean(),
                     fidelity["fidelity_dice"].mean(), fidelity["fidelity_separation"].mean())
        log.info("%s: mean z per backbone %s", variant, scores.groupby("backbone")["z"].mean().round(3).to_dict())
