"""Snakemake wrapper for rules evaluate (one run) and evaluate_runs (segment.batch_runs: every run of one arch and
seed): the polyp toolbox's scores (hardgen.metrics) of saved prediction maps, per test set and pooled
("overall"): rows of testset, metric, value."""

from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from hardgen.data import load_manifest
    from hardgen.io import write_csv
    from hardgen.metrics import evaluate_table, prediction_table

    manifest = load_manifest(snakemake.input.manifest)
    test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
    predictions, tables = snakemake.input.predictions, snakemake.output.table
    if isinstance(tables, str):  # rule evaluate: one run
        predictions, tables = [predictions], [tables]
    for folder, out in zip(predictions, tables, strict=True):
        table = evaluate_table(prediction_table(test_rows, folder))
        write_csv(out, table)
        log.info("%s\n%s", folder, table.pivot(index="testset", columns="metric", values="value")
                 .reindex(index=table["testset"].unique(), columns=table["metric"].unique()).round(4).to_string())
