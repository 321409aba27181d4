"""Snakemake wrapper for rules evaluate (one run) and evaluate_runs (segment.batch_runs: every run of one arch and
seed): the scores of saved prediction maps under evaluate.protocol (hardgen.metrics: the polyp toolbox or the binary
protocol), per test set and pooled ("overall"): rows of testset, metric, value."""

from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from hardgen.data import load_manifest
    from hardgen.io import path_list, write_csv
    from hardgen.metrics import evaluate_table, prediction_table

    manifest = load_manifest(snakemake.input.manifest)
    test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
    # rule evaluate: one run; evaluate_runs: lists
    for folder, out in zip(path_list(snakemake.input.predictions), path_list(snakemake.output.table), strict=True):
        table = evaluate_table(prediction_table(test_rows, folder), protocol=snakemake.params.protocol)
        write_csv(out, table)
        log.info("%s\n%s", folder, table.pivot(index="testset", columns="metric", values="value")
                 .reindex(index=table["testset"].unique(), columns=table["metric"].unique()).round(4).to_string())
