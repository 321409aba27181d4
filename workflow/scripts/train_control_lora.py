"""Snakemake wrapper for rule train_control_lora: control-lora-v3 training of the plain Control-LoRA."""

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

    p = snakemake.params
    files = TrainFiles(
        base=p.base,
        conditions_csv=snakemake.input.conditions,
        manifest_csv=snakemake.input.manifest,
        out_dir=str(Path(snakemake.output.lora).parent),
        init_lora=snakemake.input.init_weights[0] if snakemake.input.init_weights else None,  # lora.init_weights
    )
    settings = train_settings(LoraJob.from_params("plain", dict(p.items())), files, num_gpus=gpus)
    inputs = {"conditions": snakemake.input.conditions, "manifest": snakemake.input.manifest}
    if settings.init_lora:
        inputs["init_weights"] = settings.init_lora
    prepare_resume(settings, inputs)
    log.info("summary: %s", run_training(settings, gpus))
