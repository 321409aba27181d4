"""Snakemake wrapper for rule prototype: mean feature of real polyp crops under every backbone without a prototype file
of the user's (one job), each cropped by its backbones.<key>.prototype_crop."""

from hardgen.core.devices import claim_gpus, configure_torch
from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from pathlib import Path

    from hardgen.data.manifest import load_manifest
    from hardgen.scoring.features import BackboneSpec, compute_prototype

    manifest = load_manifest(snakemake.input.manifest)
    device = configure_torch(snakemake.threads)
    for key, out_path in zip(snakemake.params.backbones, snakemake.output, strict=True):
        if Path(out_path).name != f"{key}.safetensors":  # the expand over COMPUTED_PROTOTYPES keeps the config's order
            raise RuntimeError(f"internal: output {out_path} is not backbone {key!r}'s prototype")
        summary = compute_prototype(
            manifest,
            BackboneSpec.from_config(key, snakemake.params.backbones[key]),
            out_path,
            pad=snakemake.params.pad,
            device=device,
            config_key=key,
            resolution=snakemake.params.resolution,
            crop=snakemake.params.recipes[key]["prototype_crop"],
        )
        log.info("prototype %s: %s", key, summary)
