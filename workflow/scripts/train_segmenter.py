"""Snakemake wrapper for rule train_segmenter: one architecture x policy x seed on real + its subset."""

from pathlib import Path

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    import pandas as pd

    from hardgen.data import load_manifest
    from hardgen.segment import SegmenterSpec, train_segmenter

    arch, cfg = snakemake.wildcards.arch, snakemake.params.segment
    manifest = load_manifest(snakemake.input.manifest)
    pairs = manifest.loc[manifest["split"] == "train", ["id", "image", "mask"]].rename(columns={"id": "sample_id"})
    if snakemake.input.subset:
        pairs = pd.concat([pairs, pd.read_csv(snakemake.input.subset, dtype={"sample_id": str})], ignore_index=True)
    summary = train_segmenter(
        pairs,
        SegmenterSpec.from_config(snakemake.params.spec, arch),
        out_dir=Path(snakemake.output.model).parent,
        size=cfg["size"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["learning_rate"],
        grad_clip=cfg.get("grad_clip"),
        multi_scale=cfg.get("multi_scale", [1.0]),
        seed=int(snakemake.wildcards.seed),
        device=configure_torch(snakemake.threads),
        config_key=arch,
    )
    log.info("%s/%s/seed-%s: %s", arch, snakemake.wildcards.policy, snakemake.wildcards.seed, summary)
