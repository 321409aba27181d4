"""Snakemake wrapper for rule evaluate: per-image metrics of one model on the five test sets."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.data import load_manifest
    from hardgen.io import write_csv
    from hardgen.metrics import evaluate_segmenter, summarize
    from hardgen.segment import SegmenterSpec, load_segmenter

    arch = snakemake.wildcards.arch
    device = configure_torch(snakemake.threads)
    model = load_segmenter(SegmenterSpec.from_config(snakemake.params.spec, arch), snakemake.input.model, device=device)
    manifest = load_manifest(snakemake.input.manifest)
    test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
    per_image = evaluate_segmenter(model, test_rows, size=snakemake.params.size, device=device)
    write_csv(snakemake.output[0], per_image)
    log.info("\n%s", summarize(per_image).pivot(index="testset", columns="metric", values="value").round(3))
