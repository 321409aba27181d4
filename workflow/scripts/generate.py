"""Snakemake wrapper for rule generate: one shard of one variant's images."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.generate import generate_shard
    from hardgen.io import reset_if_changed, write_csv
    from hardgen.stages import generation_fingerprint

    p, gen = snakemake.params, snakemake.params.generation
    shard, variant = int(snakemake.wildcards.shard), snakemake.wildcards.variant
    # Images already in the shard folder are kept on rerun (crash resume) only if the same LoRA and settings
    # made them.
    fingerprint = generation_fingerprint(
        snakemake.input.lora, p.base, {**gen, "model": p.model, "seed": p.seed}
    )
    kept = reset_if_changed(p.out_dir, fingerprint)
    log.info("shard folder %s: %s", p.out_dir, "resuming" if kept else "fresh")
    table = generate_shard(
        p.base,
        snakemake.input.lora,
        snakemake.input.conditions,
        shard,
        gen["shards"],
        p.out_dir,
        family=p.model["family"],
        resolution=p.model["resolution"],
        prompt=p.model["prompt"],
        steps=gen["steps"],
        guidance_scale=gen["guidance_scale"],
        condition_scale=gen["condition_scale"],
        seed=p.seed,
        batch_size=gen["batch_size"],
        device=configure_torch(snakemake.threads),
        variant=variant,
        vae=p.model["vae"],
    )
    write_csv(snakemake.output[0], table)
    log.info("%s shard %d: %d images", variant, shard, len(table))
