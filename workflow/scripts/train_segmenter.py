"""Snakemake wrapper for rules train_segmenter (arch x policy x seed on real + its subset) and train_judge.

Both train on the real training images plus the policy's subset (none for the judge) for segment.iterations
batches, and write run.json (hardgen.segment.write_run_record) beside the model. A benchmark segmenter then
saves its PraNet-style prediction maps of the test sets (hardgen.predict) while the model is in memory; the
evaluate rule scores those files. The judge (params.judge) trains
with seed JUDGE_SEED_OFFSET + feedback.judge_seed, so it is never the same run as a benchmark segmenter.
"""

from pathlib import Path

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    import pandas as pd

    from hardgen.data import load_manifest
    from hardgen.segment import JUDGE_SEED_OFFSET, SegmenterSpec, train_segmenter, write_run_record

    arch, cfg, policy = snakemake.wildcards.arch, snakemake.params.segment, snakemake.params.policy
    seed = int(snakemake.wildcards.seed)
    training_seed = JUDGE_SEED_OFFSET + seed if snakemake.params.judge else seed
    manifest = load_manifest(snakemake.input.manifest)
    pairs = manifest.loc[manifest["split"] == "train", ["id", "image", "mask"]].rename(columns={"id": "sample_id"})
    pairs = pairs.assign(variant="real")
    subset_path = snakemake.input.get("subset")
    if subset_path:
        subset = pd.read_csv(subset_path, dtype={"sample_id": str})
        pairs = pd.concat([pairs, subset], ignore_index=True)
    summary = train_segmenter(
        pairs,
        SegmenterSpec.from_config(snakemake.params.spec, arch),
        out_dir=Path(snakemake.output.model).parent,
        size=cfg["size"],
        iterations=cfg["iterations"],
        batch_size=cfg["batch_size"],
        lr=cfg["learning_rate"],
        grad_clip=cfg["grad_clip"],
        multi_scale=cfg["multi_scale"],
        seed=training_seed,
        device=configure_torch(snakemake.threads),
        config_key=arch,
    )
    record = write_run_record(snakemake.output.run, arch, policy, seed, summary)
    if hasattr(snakemake.output, "predictions"):
        from hardgen.predict import save_prediction_maps
        from hardgen.segment import load_segmenter

        device = configure_torch(snakemake.threads)
        model = load_segmenter(SegmenterSpec.from_config(snakemake.params.spec, arch), snakemake.output.model,
                               device=device)
        test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
        maps = save_prediction_maps(model, test_rows, size=cfg["size"], out_root=snakemake.output.predictions,
                                    device=device)
        log.info("%d prediction maps in %s", len(maps), snakemake.output.predictions)
    log.info("%s/%s/seed-%s%s: %s", arch, policy, seed, " (feedback judge)" if snakemake.params.judge else "", record)
