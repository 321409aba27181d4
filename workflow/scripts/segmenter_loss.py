"""Snakemake wrapper for rules segmenter_loss, judge_loss and sample_losses: per-sample loss of real-trained models on
every generated sample: a benchmark segmenter (arch, seed), or the feedback judge (the transfer matrix's model-specific
source), with each sample's mask foreground fraction (the covariate of the transfer table) and the Dice of its
prediction against the conditioning mask (the fidelity guard's first view, hardgen.fidelity). segmenter_loss and
judge_loss: one model per job; sample_losses (segment.batch_runs): every model in one job."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging


def as_list(value):
    return [value] if isinstance(value, str) else list(value)


with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    import pandas as pd

    from hardgen.io import DataError, write_table
    from hardgen.segment import SegmenterSpec, foreground_fractions, load_segmenter, sample_losses

    device = configure_torch(snakemake.threads)
    generated = {}
    for path in snakemake.input.generated:
        frame = pd.read_csv(path, dtype={"sample_id": str})
        variants = frame["variant"].unique() if "variant" in frame.columns else []
        if len(variants) != 1:
            raise DataError(f"{path}: a generated manifest must hold exactly one variant, found {list(variants)}")
        if variants[0] in generated:
            raise DataError(f"{path}: variant {variants[0]!r} is already in another generated manifest")
        generated[variants[0]] = frame
    fractions = {variant: foreground_fractions(frame)["fg_fraction"].to_numpy() for variant, frame in generated.items()}
    models, tables = as_list(snakemake.input.models), as_list(snakemake.output.tables)
    archs = list(snakemake.params.archs)  # the segment.archs key of each model, in output order
    for arch, model_path, out in zip(archs, models, tables, strict=True):
        spec = SegmenterSpec.from_config(snakemake.params.specs[arch], arch)
        model = load_segmenter(spec, model_path, device=device)
        frames = [sample_losses(model, frame, size=snakemake.params.size, device=device)
                  .assign(fg_fraction=fractions[variant], variant=variant) for variant, frame in generated.items()]
        table = pd.concat(frames, ignore_index=True)
        write_table(out, table, ["sample_id", "variant", "loss", "dice", "fg_fraction"], "sample losses")
        log.info("%s (%s): mean loss per variant %s; mean Dice %s", model_path, arch,
                 table.groupby("variant")["loss"].mean().round(4).to_dict(),
                 table.groupby("variant")["dice"].mean().round(4).to_dict())
