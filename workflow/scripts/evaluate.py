"""Snakemake wrapper for rule evaluate: PraNet prediction maps of one model on the test sets, scored with the
polyp toolbox's protocol (hardgen.metrics): per test set and pooled ("overall") rows of testset, metric, value."""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.data import load_manifest
    from hardgen.io import write_csv
    from hardgen.metrics import evaluate_segmenter
    from hardgen.segment import SegmenterSpec, load_segmenter

    arch = snakemake.wildcards.arch
    device = configure_torch(snakemake.threads)
    model = load_segmenter(SegmenterSpec.from_config(snakemake.params.spec, arch), snakemake.input.model, device=device)
    manifest = load_manifest(snakemake.input.manifest)
    test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
    table = evaluate_segmenter(
        model, test_rows, size=snakemake.params.size, pred_root=snakemake.output.predictions, device=device
    )
    write_csv(snakemake.output.table, table)
    log.info("\n%s", table.pivot(index="testset", columns="metric", values="value")
             .reindex(index=table["testset"].unique(), columns=table["metric"].unique()).round(4).to_string())
