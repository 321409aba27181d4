"""Snakemake wrapper for the segmenter rules: hardgen.benchmark.runs.train_run for each run of the job.

train_segmenter (one run) and train_judge (one feedback/filter judge) run one; with segment.batch_runs (the demo)
train_segmenters runs every synthetic run of one ratio and seed and train_real the real-only runs of one seed,
every arch in one job. params.runs lists (arch, policy, ratio label), in the order of the
list outputs. Each run trains on the real training images plus its policy's subset for segment.iterations batches,
writes run.json beside the model and (benchmark runs) its PraNet-style test maps; the evaluate rules score those.
Judges (params.judge) train with seed JUDGE_SEED_OFFSET + feedback.judge_seed. With segment.pixel_filter set, a
synthetic run gets the real-only judge of its arch (params.filter_judges, FreeMask's pixel filter).
"""

from hardgen.core.devices import claim_gpus, configure_torch
from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log, claim_gpus(snakemake.resources.get("gpu", 0)):
    from hardgen.benchmark.runs import RunJob, RunPaths, SegmenterRun, train_run
    from hardgen.core.io import path_list

    device = configure_torch(snakemake.threads)
    seed = int(snakemake.wildcards.seed)
    runs = [tuple(run) for run in snakemake.params.runs]
    models, run_records = path_list(snakemake.output.model), path_list(snakemake.output.run)
    maps = path_list(snakemake.output.predictions) if hasattr(snakemake.output, "predictions") else [None] * len(runs)
    synthetic = iter(path_list(snakemake.input.get("subset", [])))  # one subset per synthetic run, in run order
    records = iter(path_list(snakemake.input.get("record", [])))  # and its pool record (infeasible: the run is skipped)
    filter_judges = dict(snakemake.params.filter_judges)  # arch -> its real-only judge; {}: no pixel filter
    # filter_judge_cache: each judge loaded, and its real images' class means computed, once per job; train_judge has
    # no test maps, so no testsets or protocol
    job = RunJob(snakemake.input.manifest, snakemake.params.segment, device,
                 testsets=snakemake.params.get("testsets", ()), protocol=snakemake.params.get("protocol"),
                 filter_judge_cache={}, report_to=snakemake.params.report_to)
    if not len(runs) == len(models) == len(run_records) == len(maps):
        raise ValueError(f"{len(runs)} runs for {len(models)} models, {len(run_records)} records, {len(maps)} map "
                         "folders")
    for k, (arch, policy, ratio) in enumerate(runs):
        real = policy == "real"
        paths = RunPaths(model=models[k], run=run_records[k], subset=None if real else next(synthetic),
                         predictions=maps[k], subset_record=None if real else next(records))
        train_run(job, SegmenterRun(arch, snakemake.params.specs[arch], policy, float(ratio), seed,
                                    feedback_judge=snakemake.params.judge,
                                    filter_judge=None if real else filter_judges.get(arch)), paths)
        log.info("run %d/%d done: %s %s ratio %s", k + 1, len(runs), arch, policy, ratio)
