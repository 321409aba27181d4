"""Snakemake wrapper for rules evaluate (one run) and evaluate_runs (segment.batch_runs: every run of one arch and
seed): the polyp toolbox's scores (hardgen.metrics) of saved prediction maps, per test set and pooled
("overall"): rows of testset, metric, value. A skipped run (its subset infeasible, filter.on_short_pool: skip) has
no maps: its table is header-only."""

from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from hardgen.data import load_manifest
    from pathlib import Path

    import pandas as pd

    from hardgen.io import path_list, write_csv
    from hardgen.layout import SKIPPED_MARKER
    from hardgen.metrics import evaluate_table, prediction_table

    manifest = load_manifest(snakemake.input.manifest)
    test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
    # rule evaluate: one run; evaluate_runs: lists
    for folder, out in zip(path_list(snakemake.input.predictions), path_list(snakemake.output.table), strict=True):
        if (Path(folder) / SKIPPED_MARKER).is_file():
            write_csv(out, pd.DataFrame(columns=["testset", "metric", "value"]))
            log.info("%s: skipped run (infeasible subset), no maps to score", folder)
            continue
        table = evaluate_table(prediction_table(test_rows, folder))
        write_csv(out, table)
        log.info("%s\n%s", folder, table.pivot(index="testset", columns="metric", values="value")
                 .reindex(index=table["testset"].unique(), columns=table["metric"].unique()).round(4).to_string())
