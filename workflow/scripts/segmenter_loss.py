"""Snakemake wrapper for rules segmenter_loss and judge_loss: per-sample loss of real-trained segmenters on generated
samples. segmenter_loss: the real-only benchmark segmenters of one seed (every arch: params.specs, in the order of
the models and outputs) on one variant's samples; judge_loss: the feedback judge on every variant's samples (the
transfer matrix's model-specific source). Each row has the sample's mask foreground fraction (the covariate of the
transfer table) and the Dice of the prediction against the conditioning mask (the fidelity guard's first view,
hardgen.scoring.fidelity); the table carries its keys (arch, seed)."""

from hardgen.core.devices import claim_gpus, configure_torch
from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    import pandas as pd

    from hardgen.core.io import DataError, path_list, read_csv_table, write_table
    from hardgen.segmentation.build import SegmenterSpec, load_segmenter
    from hardgen.segmentation.measures import foreground_fractions, sample_losses

    seed = int(snakemake.wildcards.seed)
    device = configure_torch(snakemake.threads)
    generated = []
    for path in path_list(snakemake.input.generated):
        table = read_csv_table(path, ("sample_id", "image", "mask", "variant"), "generated manifest")
        variants = table["variant"].unique() if "variant" in table.columns else []
        if len(variants) != 1:
            raise DataError(f"{path}: a generated manifest must hold exactly one variant, found {list(variants)}")
        generated.append((variants[0], table, foreground_fractions(table)["fg_fraction"].to_numpy()))
    specs = dict(snakemake.params.specs)
    models, outputs = path_list(snakemake.input.model), path_list(snakemake.output)
    for arch, model_path, out_path in zip(specs, models, outputs, strict=True):
        model = load_segmenter(SegmenterSpec.from_config(specs[arch], arch), model_path, device=device)
        frames = []
        for variant, table, fg in generated:
            losses = sample_losses(model, table, size=snakemake.params.size, device=device)
            frames.append(losses.assign(fg_fraction=fg, variant=variant))
        result = pd.concat(frames, ignore_index=True).assign(arch=arch, seed=seed)
        write_table(out_path, result, ["arch", "seed", "sample_id", "variant", "loss", "dice", "fg_fraction"],
                    "sample losses")
        log.info("%s/seed-%d: mean loss per variant %s; mean Dice %s", arch, seed,
                 result.groupby("variant")["loss"].mean().round(4).to_dict(),
                 result.groupby("variant")["dice"].mean().round(4).to_dict())
