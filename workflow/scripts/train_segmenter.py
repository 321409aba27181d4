"""Snakemake wrapper for rules train_segmenter (one run), train_segmenters (segment.batch_runs: every synthetic run of
one arch and seed) and train_judge: hardgen.benchmark_runs.train_run for each run.

Each run trains on the real training images plus its policy's subset for segment.iterations batches, writes
run.json beside the model and (benchmark runs) its PraNet-style test maps; the evaluate rule scores those. The
judge (params.judge) trains with seed JUDGE_SEED_OFFSET + feedback.judge_seed. With segment.pixel_filter set, a
synthetic run gets the real-only judge of its arch (input.judge, FreeMask's pixel filter).
"""

from hardgen.devices import claim_gpus, configure_torch
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.benchmark_runs import RunPaths, train_run

    device = configure_torch(snakemake.threads)
    arch, seed = snakemake.wildcards.arch, int(snakemake.wildcards.seed)
    runs = snakemake.params.runs  # [(policy, ratio label)]: one per job, or a batch
    batched = snakemake.params.batched  # outputs are lists, one entry per run
    for k, (policy, ratio) in enumerate(runs):
        paths = RunPaths(
            model=snakemake.output.model[k] if batched else snakemake.output.model,
            run=snakemake.output.run[k] if batched else snakemake.output.run,
            subset=(snakemake.input.subset[k] if batched else snakemake.input.subset) if policy != "real" else None,
            predictions=((snakemake.output.predictions[k] if batched else snakemake.output.predictions)
                         if hasattr(snakemake.output, "predictions") else None),
        )
        train_run(snakemake.input.manifest, snakemake.params.spec, snakemake.params.segment, arch, policy,
                  float(ratio), seed, paths, device, judge=snakemake.params.judge,
                  filter_judge=snakemake.input.get("judge") or None, testsets=snakemake.params.get("testsets", ()))
        log.info("run %d/%d done: %s ratio %s", k + 1, len(runs), policy, ratio)
