# Prototype discrepancy of every sample under every backbone (real training images are the reference), the
# fidelity guard (does a sample still show its polyp?), then training subsets per policy, ratio and seed.


rule score:
    # One job per set (real, each generated variant): the fidelity guard, then the scores, the held-out backbone
    # (filter.fidelity_backbone) loaded once for both. real: the guard's calibration, the real training images'
    # separations; a generated variant: every sample graded, the grades joined into its score table.
    input:
        unpack(fidelity_input),
        manifest=L("manifest"),
        samples=score_input,
        prototypes=prototype_files(BACKBONES),
    output:
        scores=L("scores"),
        # the samples' backbone features (rows as in the CSV), for the report's real-vs-generated PCA
        features=L("features"),
        # real: sample_id, separation (the calibration); a generated variant: its grades (hardgen.scoring.fidelity)
        fidelity=L("fidelity"),
    log:
        LOG("score/{scored}.log"),
    benchmark:
        BENCH("score/{scored}.tsv")
    # beside generation (5): the real images' calibration is ready when the samples are graded
    priority: 5
    params:
        sets=lambda wildcards: [wildcards.scored],
        # the fidelity guard's judges (<arch>/seed-<s>), in the order of input.sample_losses
        judges=lambda wildcards: ([] if wildcards.scored == "real" else guard_judges()),
        backbones=extractor_specs(BACKBONES),
        fidelity_backbone=FIDELITY_BACKBONE,
        pad=SETTINGS.hard.crop_pad,
        resolution=SETTINGS.model.resolution,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/score.py"


rule filter:
    # segment.batch_runs (the demo): every subset of one ratio and segmenter seed in one job, the granularity of the
    # train_segmenters job that reads them (selection takes milliseconds, a job's start-up most of a second), so a new
    # ratio or seed adds jobs without rewriting the others. Otherwise one job per subset: a policy's pool reads only
    # its source variant's manifest (and score table when it filters by hardness or fidelity) and params hold only
    # the filter.* keys of its pool, so e.g. filter.min_fidelity rewrites hard_faithful's subsets alone.
    input:
        manifest=L("manifest"),
        scores=lambda wildcards: expand(
            L("scores", n_real=n_real(wildcards)), scored=policy_scored(filter_policies(wildcards))
        ),
        generated=lambda wildcards: expand(
            L("generated", n_real=n_real(wildcards)), variant=policy_sources(filter_policies(wildcards))
        ),
    output:
        # the subset tables and, beside each, its pool record (pool size, need, feasible: filter.on_short_pool)
        subsets=([L("subset", policy=p) for p in SYNTHETIC_POLICIES] if BATCH_RUNS else [L("subset")]),
        records=([L("subset_record", policy=p) for p in SYNTHETIC_POLICIES] if BATCH_RUNS else [L("subset_record")]),
    log:
        (
            LOG("filter/ratio-{ratio}/seed-{seed}.log")
            if BATCH_RUNS
            else LOG("filter/{policy}/ratio-{ratio}/seed-{seed}.log")
        ),
    benchmark:
        (
            BENCH("filter/ratio-{ratio}/seed-{seed}.tsv")
            if BATCH_RUNS
            else BENCH("filter/{policy}/ratio-{ratio}/seed-{seed}.tsv")
        )
    params:
        # the (policy, ratio) of each output, in output order
        runs=lambda wildcards: [(p, wildcards.ratio) for p in filter_policies(wildcards)],
        filter=lambda wildcards: filter_params(filter_policies(wildcards)),
        on_short_pool=SETTINGS.filter.on_short_pool,
        base_seed=SETTINGS.seed,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/filter.py"
