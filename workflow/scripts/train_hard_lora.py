"""Snakemake wrapper for rule train_hard_lora: hardness fine-tuning against real-feature prototypes."""

from pathlib import Path

from hardgen.core.devices import claim_gpus, configure_torch
from hardgen.core.logging_utils import stage_logging

gpus = snakemake.resources.get("gpu", 0)
with stage_logging(snakemake.log[0]) as log, claim_gpus(gpus):
    from hardgen.generator.stages import (
        LoraJob,
        TrainFiles,
        prepare_resume,
        run_training,
        train_settings,
    )

    configure_torch(snakemake.threads)

    p, inp = snakemake.params, snakemake.input
    job = LoraJob.from_params("hard", dict(p.items()))
    # hard.init: plain fine-tunes the plain LoRA (the rule's input), fresh starts new adapters (no input)
    init_lora = str(inp.init_lora) if inp.get("init_lora") else None
    keys = list(job.finetune.loss_backbones)  # the order of the rule's prototypes input
    files = TrainFiles(
        base=p.base,
        conditions_csv=inp.conditions,
        manifest_csv=inp.manifest,
        out_dir=str(Path(snakemake.output.lora).parent),
        init_lora=init_lora,
        prototypes=dict(zip(keys, inp.prototypes, strict=True)),
    )
    settings = train_settings(job, files, num_gpus=gpus)
    inputs = {"init_lora": init_lora} if init_lora else {}
    prepare_resume(settings, {**inputs, **dict(zip(keys, inp.prototypes, strict=True))})
    log.info("summary: %s", run_training(settings, gpus))
