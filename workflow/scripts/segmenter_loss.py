"""Snakemake wrapper for rules segmenter_loss and judge_loss: per-sample loss of one real-trained benchmark segmenter
(arch, seed), or of the feedback judge (the transfer matrix's model-specific source), on every generated sample,
with each sample's mask foreground fraction (the covariate of the transfer table) and the Dice of its prediction
against the conditioning mask (the fidelity guard's first view, hardgen.fidelity)."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    import pandas as pd

    from hardgen.io import DataError, write_table
    from hardgen.segment import SegmenterSpec, foreground_fractions, load_segmenter, sample_losses

    arch, seed = snakemake.wildcards.arch, snakemake.wildcards.seed
    device = configure_torch(snakemake.threads)
    model = load_segmenter(SegmenterSpec.from_config(snakemake.params.spec, arch), snakemake.input.model, device=device)
    frames = []
    for path in snakemake.input.generated:
        generated = pd.read_csv(path, dtype={"sample_id": str})
        variants = generated["variant"].unique() if "variant" in generated.columns else []
        if len(variants) != 1:
            raise DataError(f"{path}: a generated manifest must hold exactly one variant, found {list(variants)}")
        losses = sample_losses(model, generated, size=snakemake.params.size, device=device)
        losses["fg_fraction"] = foreground_fractions(generated)["fg_fraction"].to_numpy()
        frames.append(losses.assign(variant=variants[0]))
    table = pd.concat(frames, ignore_index=True)
    write_table(snakemake.output[0], table, ["sample_id", "variant", "loss", "dice", "fg_fraction"], "sample losses")
    log.info("%s/seed-%s: mean loss per variant %s; mean Dice %s", arch, seed,
             table.groupby("variant")["loss"].mean().round(4).to_dict(),
             table.groupby("variant")["dice"].mean().round(4).to_dict())
