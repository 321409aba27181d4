"""Snakemake wrapper for rule filter: the training subsets of one segmenter seed, one per (policy, ratio) of the job
(segment.batch_runs: every synthetic run's; otherwise the one subset of the job's wildcards)."""

from hardgen.core import layout
from hardgen.core.logging_utils import stage_logging
from hardgen.scoring.filter import (
    build_subsets,
    read_pool_record,
    real_count,
    subset_seed,
)

with stage_logging(snakemake.log[0]) as log:
    segmenter_seed = int(snakemake.wildcards.seed)
    runs = [(policy, ratio) for policy, ratio in snakemake.params.runs]
    for (policy, ratio), out_path in zip(runs, snakemake.output.subsets, strict=True):  # the rule lists both in one order
        # n_real: the data-scarcity level of the job (data.train_subsets), absent when the curve is off
        expected = layout.path("subset", policy=policy, ratio=ratio, seed=segmenter_seed,
                               n_real=snakemake.wildcards.get("n_real"))
        if out_path != expected:
            raise RuntimeError(f"internal: output {out_path} is not the subset of {policy} at ratio {ratio}")
    draw_seed = subset_seed(snakemake.params.base_seed, segmenter_seed)
    n_real = real_count(snakemake.input.manifest)
    subsets = build_subsets(
        [(policy, float(ratio)) for policy, ratio in runs],
        score_csvs=snakemake.input.scores,
        generated_csvs=snakemake.input.generated,
        out_paths=snakemake.output.subsets,
        record_paths=snakemake.output.records,
        segmenter_seed=segmenter_seed,
        on_short_pool=snakemake.params.on_short_pool,
        n_real=n_real,
        # only the filter.* keys of the job's pools (hardgen.core.registry); the others are never read
        **dict(snakemake.params.filter),
        seed=draw_seed,
    )
    for (policy, ratio), subset, record in zip(runs, subsets, snakemake.output.records, strict=True):
        if not read_pool_record(record)["feasible"]:
            log.warning("infeasible, its segmenter runs are skipped (filter.on_short_pool: skip): %s",
                        read_pool_record(record)["reason"])
            continue
        log.info("policy %s, ratio %s (%d real images), segmenter seed %d (draw seed %d): %d synthetic samples",
                 policy, ratio, n_real, segmenter_seed, draw_seed, len(subset))
