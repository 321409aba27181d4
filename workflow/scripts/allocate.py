"""Snakemake wrapper for rule allocate: the generation plan (results/generated/plan.csv) every variant samples.

generation.per_mask samples per condition on average; allocation uniform gives each condition per_mask, hardness
spreads the same total by the real-trained judges' mean loss on each condition's real image (hardgen.scoring.allocation).
"""

from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from hardgen.data.conditioning import load_conditions_table
    from hardgen.data.manifest import load_manifest
    from hardgen.scoring.allocation import (
        condition_losses,
        make_plan,
        plan_summary,
        real_image_losses,
        write_plan,
    )

    p = snakemake.params
    conditions = load_conditions_table(snakemake.input.conditions)
    losses = None
    if p.allocation == "hardness":
        from hardgen.core.devices import configure_torch
        from hardgen.segmentation.build import SegmenterSpec

        # input.judges follows segment.archs (one real-only judge per arch, common.allocation_judges)
        judges = [(SegmenterSpec.from_config(dict(p.archs[arch]), arch), path, arch)
                  for arch, path in zip(p.archs, snakemake.input.judges, strict=True)]
        real = real_image_losses(load_manifest(snakemake.input.manifest), judges, size=p.size,
                            device=configure_torch(snakemake.threads))
        losses = condition_losses(conditions, real)
    plan = make_plan(conditions["sample_id"], p.per_mask, p.allocation, p.seed, losses)
    write_plan(plan, snakemake.output[0])
    log.info("plan (%s, per_mask %d): %s", p.allocation, p.per_mask, plan_summary(plan))
