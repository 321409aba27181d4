"""Snakemake wrapper for rule evaluate: the polyp toolbox's scores (hardgen.metrics) of one segmenter's saved
prediction maps, per test set and pooled ("overall"): rows of testset, metric, value."""

from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from hardgen.data import load_manifest
    from hardgen.io import write_csv
    from hardgen.metrics import evaluate_table, prediction_table

    manifest = load_manifest(snakemake.input.manifest)
    test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
    table = evaluate_table(prediction_table(test_rows, snakemake.input.predictions))
    write_csv(snakemake.output.table, table)
    log.info("\n%s", table.pivot(index="testset", columns="metric", values="value")
             .reindex(index=table["testset"].unique(), columns=table["metric"].unique()).round(4).to_string())
