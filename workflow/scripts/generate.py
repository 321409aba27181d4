"""Snakemake wrapper for rule generate: one shard of one variant's images (the planned samples).

How the variant samples is its registry entry's ``sampling`` (hardgen.core.registry): ``pipeline`` samples its
Control-LoRA as is (plain, hard, feedback); ``mined`` and ``guided`` sample it with the in-loss backbones'
discrepancy (hardgen.generator.mining): mined keeps the most discrepant of generation.candidates noises per sample,
guided follows the discrepancy gradient inside generation.guided.window; inpaint draws each sample's lesion into a
real frame (hardgen.generator.inpaint, hardgen.models.inpainting: generation.inpaint, its condition images made with
params.condition from the sample's label).
"""

from hardgen.core.devices import claim_gpus, configure_torch
from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.core.io import reset_if_changed, write_csv
    from hardgen.core.registry import variant as registered
    from hardgen.generator.generate import (
        GenerationSettings,
        GenerationShard,
        generate_shard,
    )
    from hardgen.generator.stages import generation_fingerprint
    from hardgen.models.sampling import Sampling

    p, gen = snakemake.params, snakemake.params.generation
    shard, variant = int(snakemake.wildcards.shard), snakemake.wildcards.variant
    entry = registered(variant)  # how it samples is its entry's sampling, never its name
    mining = guidance = judge = inpaint = None
    frames = {}
    settings = {**gen, "model": p.model, "seed": p.seed}
    if entry.sampling not in ("pipeline", "mined", "guided", "inpaint"):
        raise ValueError(f"variant {variant!r}: sampling {entry.sampling!r} (hardgen.core.registry) has no code in "
                         "workflow/scripts/generate.py")
    if entry.uses_backbones:
        from hardgen.core.io import file_digest
        from hardgen.generator.mining import (
            GuidanceSettings,
            MiningSettings,
            load_judge,
        )

        if entry.sampling == "mined":
            mining = MiningSettings(candidates=gen["candidates"], mining_steps=gen["mining_steps"])
        else:
            guidance = GuidanceSettings(strength=gen["guided"]["strength"], window=tuple(gen["guided"]["window"]))
        prototypes = dict(zip(p.backbones, snakemake.input.prototypes, strict=True))  # hard.loss_backbones order

        def judge(device):
            return load_judge(p.backbones, prototypes, resolution=p.model["resolution"], pad=p.pad, device=device)

        # the judge decides what is kept: its backbones, prototypes and crop are part of what made the images
        settings |= {"variant": variant, "backbones": p.backbones, "pad": p.pad,
                     "prototypes": {k: file_digest(v) for k, v in prototypes.items()}}
    if entry.inpaints:
        from hardgen.generator.inpaint import InpaintSettings

        condition = p.condition
        inpaint = InpaintSettings(gen["inpaint"]["dilate"], gen["inpaint"]["feather"],
                                  tuple(gen["inpaint"]["placements"]), condition["type"], condition["canny_low"],
                                  condition["canny_high"])
        frames = {"manifest": snakemake.input.manifest, "backgrounds": snakemake.input.backgrounds or None}
        # the frames and how conditions are drawn are part of what made the images
        settings |= {"condition": condition, "backgrounds": str(frames["backgrounds"])}
    # Images already in the shard folder are kept on rerun (crash resume) only if the same LoRA and settings
    # made them.
    fingerprint = generation_fingerprint(snakemake.input.lora, p.base, settings)
    kept = reset_if_changed(p.out_dir, fingerprint)
    log.info("shard folder %s: %s", p.out_dir, "resuming" if kept else "fresh")
    shard_job = GenerationShard(p.base, snakemake.input.lora, snakemake.input.conditions, shard, gen["shards"],
                                p.out_dir, variant, plan=snakemake.input.plan, vae=p.model["vae"], **frames)
    sampling = Sampling(p.model["prompt"], p.model["resolution"], gen["steps"], gen["guidance_scale"],
                        gen["condition_scale"])
    table = generate_shard(shard_job, GenerationSettings(
        sampling, family=p.model["family"], seed=p.seed, batch_size=gen["batch_size"],
        device=configure_torch(snakemake.threads), dtype=None if gen["dtype"] == "auto" else gen["dtype"],
        mining=mining, guidance=guidance, judge=judge, inpaint=inpaint,
    ))
    write_csv(snakemake.output[0], table)
    log.info("%s shard %d: %d images", variant, shard, len(table))
