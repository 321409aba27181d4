"""Snakemake wrapper for rule train_feedback_lora: the model-specific (ArSDM-style) baseline."""

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
    # feedback.init: plain fine-tunes the plain LoRA (the rule's input), fresh starts new adapters (no input)
    init_lora = str(inp.init_lora) if inp.get("init_lora") else None
    files = TrainFiles(
        base=p.base,
        conditions_csv=inp.conditions,
        manifest_csv=inp.manifest,
        out_dir=str(Path(snakemake.output.lora).parent),
        init_lora=init_lora,
        segmenter_weights=inp.segmenter,
    )
    settings = train_settings(LoraJob.from_params("feedback", dict(p.items())), files, num_gpus=gpus)
    inputs = {"init_lora": init_lora} if init_lora else {}
    prepare_resume(settings, {**inputs, "segmenter": inp.segmenter})
    log.info("summary: %s", run_training(settings, gpus))
