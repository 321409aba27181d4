"""Snakemake wrapper for rule segmenter_loss: per-sample loss of a real-trained segmenter on generated samples."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    import pandas as pd

    from hardgen.io import write_csv
    from hardgen.segment import SegmenterSpec, load_segmenter, sample_losses

    arch = snakemake.wildcards.arch
    device = configure_torch(snakemake.threads)
    model = load_segmenter(SegmenterSpec.from_config(snakemake.params.spec, arch), snakemake.input.model, device=device)
    frames = []
    for path in snakemake.input.generated:
        generated = pd.read_csv(path, dtype={"sample_id": str})
        losses = sample_losses(model, generated, size=snakemake.params.size, device=device)
        frames.append(losses.assign(variant=generated["variant"].iloc[0] if len(generated) else ""))
    table = pd.concat(frames, ignore_index=True)
    write_csv(snakemake.output[0], table)
    log.info("%s: mean loss per variant %s", arch, table.groupby("variant")["loss"].mean().round(4).to_dict())
