"""Snakemake wrapper for rules evaluate (one run) and evaluate_runs (segment.batch_runs: every run of one arch and
seed): the scores of saved prediction maps under evaluate.protocol (hardgen.evaluation.metrics: the polyp toolbox or the binary
protocol), per test set and pooled ("overall"): rows of testset, metric, value; beside each, the per-image scores they
average (testset, image, metric, value: the paired bootstrap of the report's contrasts resamples them). A skipped run (its subset
infeasible, filter.on_short_pool: skip) has no maps: both its tables are header-only."""

from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from pathlib import Path

    import pandas as pd

    from hardgen.core.io import path_list, write_csv
    from hardgen.core.layout import SKIPPED_MARKER
    from hardgen.data.manifest import load_manifest
    from hardgen.evaluation.metrics import evaluate_table_with_images, prediction_table

    manifest = load_manifest(snakemake.input.manifest)
    test_rows = manifest[manifest["split"].isin(snakemake.params.testsets)]
    # rule evaluate: one run; evaluate_runs: lists
    for folder, out, images_out in zip(path_list(snakemake.input.predictions), path_list(snakemake.output.table),
                                       path_list(snakemake.output.images), strict=True):
        if (Path(folder) / SKIPPED_MARKER).is_file():
            write_csv(out, pd.DataFrame(columns=["testset", "metric", "value"]))
            write_csv(images_out, pd.DataFrame(columns=["testset", "image", "metric", "value"]))
            log.info("%s: skipped run (infeasible subset), no maps to score", folder)
            continue
        table, images = evaluate_table_with_images(prediction_table(test_rows, folder),
                                                   protocol=snakemake.params.protocol)
        write_csv(out, table)
        write_csv(images_out, images)
        log.info("%s\n%s", folder, table.pivot(index="testset", columns="metric", values="value")
                 .reindex(index=table["testset"].unique(), columns=table["metric"].unique()).round(4).to_string())
