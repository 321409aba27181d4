# Segmentation benchmark: each architecture x policy x ratio x seed trains on real + its subset (round(ratio x real)
# synthetic images; real: ratio 0) for the same number of iterations (segment.iterations batches), then is evaluated
# on the five test sets; the real-trained models of every seed also score every generated sample (does hardness
# transfer?) and grade it for the fidelity guard (Dice against its conditioning mask). The feedback generator's judge is a
# separate real-only run (train_judge), so the transfer table never scores samples with the model the feedback
# LoRA was trained against.


rule train_segmenter:
    input:
        manifest=L("manifest"),
        subset=subset_input,
        record=subset_record_input,
        judges=lambda wildcards: list(run_filter_judges(wildcards).values()),
    output:
        model=L("model"),
        run=L("run"),
        # PraNet's test script's maps, written while the model is in memory (no second model load)
        predictions=directory(L("predictions")),
    log:
        LOG("train_segmenter/{arch}/{policy}/ratio-{ratio}/seed-{seed}.log"),
    benchmark:
        BENCH("train_segmenter/{arch}/{policy}/ratio-{ratio}/seed-{seed}.tsv")
    # beside generation (5), so the real-only models are ready to grade the samples when the last variant is made
    priority: 5
    params:
        specs=lambda wildcards: arch_specs([wildcards.arch]),
        segment=lambda wildcards: segment_recipe(pixel_filter=bool(run_filter_judges(wildcards))),
        runs=lambda wildcards: [(wildcards.arch, wildcards.policy, wildcards.ratio)],
        filter_judges=run_filter_judges,
        judge=False,
        # segment.report_to (null: train.report_to): the training curve's tracker
        report_to=SETTINGS.report_to("segment"),
        testsets=TESTSETS,
        protocol=PROTOCOL,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/train_segmenter.py"


rule train_judge:
    input:
        manifest=L("manifest"),
    output:
        model=L("judge"),
        run=L("judge_run"),
    log:
        LOG("train_judge/{arch}/seed-{seed}.log"),
    benchmark:
        BENCH("train_judge/{arch}/seed-{seed}.tsv")
    # the judges feed allocate, which every generate job waits for
    priority: 15
    params:
        specs=lambda wildcards: arch_specs([wildcards.arch]),
        segment=segment_recipe(),
        runs=lambda wildcards: [(wildcards.arch, "real", "0")],
        filter_judges={},
        judge=True,
        report_to=SETTINGS.report_to("segment"),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/train_segmenter.py"


if BATCH_RUNS:

    # segment.batch_runs (the CPU demo): fewer, fatter jobs, the same library call per run
    # (hardgen.benchmark.runs.train_run) and the same files: only the scheduling changes. train_segmenters trains the
    # synthetic runs of one ratio and seed, every arch (so the jobs are of a size: the CNN's runs take ~1.7x the
    # transformer's) and train_real the real-only runs of one seed; evaluate_runs scores every run's maps of one
    # (arch, seed). The judges stay one job each: the feedback variant's cost (report) includes its judge's job. A
    # test forces the per-run rules on a finished run and gets byte-identical files.
    ruleorder: train_segmenters > train_segmenter
    ruleorder: train_real > train_segmenter
    ruleorder: evaluate_runs > evaluate

    rule train_segmenters:
        input:
            manifest=L("manifest"),
            # one subset per run, in the order of params.runs
            subset=lambda wildcards: [
                L("subset", policy=p, ratio=r, seed=wildcards.seed, n_real=n_real(wildcards))
                for _, p, r in ratio_runs(wildcards)
            ],
            # each subset's pool record: an infeasible one (filter.on_short_pool: skip) skips its run
            record=lambda wildcards: [
                L("subset_record", policy=p, ratio=r, seed=wildcards.seed, n_real=n_real(wildcards))
                for _, p, r in ratio_runs(wildcards)
            ],
            judges=list(filter_judges(ARCHS).values()),
        output:
            model=run_patterns(L("model"), RATIO_RUNS),
            run=run_patterns(L("run"), RATIO_RUNS),
            predictions=[directory(p) for p in run_patterns(L("predictions"), RATIO_RUNS)],
        log:
            LOG("train_segmenters/ratio-{ratio}/seed-{seed}.log"),
        benchmark:
            BENCH("train_segmenters/ratio-{ratio}/seed-{seed}.tsv")
        params:
            specs=arch_specs(ARCHS),
            segment=segment_recipe(pixel_filter=bool(filter_judges(ARCHS))),
            runs=ratio_runs,
            filter_judges=lambda wildcards: filter_judges(ARCHS, n_real(wildcards)),
            judge=False,
            report_to=SETTINGS.report_to("segment"),
            testsets=TESTSETS,
            protocol=PROTOCOL,
        threads: 1
        resources:
            mem_mb=8000,
            runtime=720 * len(RATIO_RUNS),
            gpu=1,
        conda:
            ENV
        script:
            "../scripts/train_segmenter.py"

    rule train_real:
        input:
            manifest=L("manifest"),
        output:
            model=run_patterns(L("model"), REAL_RUNS),
            run=run_patterns(L("run"), REAL_RUNS),
            predictions=[directory(p) for p in run_patterns(L("predictions"), REAL_RUNS)],
        log:
            LOG("train_real/seed-{seed}.log"),
        benchmark:
            BENCH("train_real/seed-{seed}.tsv")
        # beside generation (5), so the real-only models are ready to grade the samples when the last variant is made
        priority: 5
        params:
            specs=arch_specs(ARCHS),
            segment=segment_recipe(),
            runs=REAL_RUNS,
            filter_judges={},
            judge=False,
            report_to=SETTINGS.report_to("segment"),
            testsets=TESTSETS,
            protocol=PROTOCOL,
        threads: 1
        resources:
            mem_mb=8000,
            runtime=720 * len(REAL_RUNS),
            gpu=1,
        conda:
            ENV
        script:
            "../scripts/train_segmenter.py"

    rule evaluate_runs:
        input:
            manifest=L("manifest"),
            predictions=lambda wildcards: batch_paths(L("predictions"), wildcards, RUNS),
        output:
            table=batch_patterns("eval", RUNS),
            images=batch_patterns("eval_images", RUNS),
        log:
            LOG("evaluate_runs/{arch}/seed-{seed}.log"),
        benchmark:
            BENCH("evaluate_runs/{arch}/seed-{seed}.tsv")
        params:
            testsets=TESTSETS,
            protocol=PROTOCOL,
        threads: 1
        resources:
            mem_mb=2000,
            runtime=60 * len(RUNS),
        conda:
            ENV
        script:
            "../scripts/evaluate.py"


rule evaluate:
    # The polyp toolbox's scores of the saved maps (hardgen evaluate-maps' code): no model, no torch, so a
    # rerun (`--forcerun evaluate`) rescores without retraining.
    input:
        manifest=L("manifest"),
        predictions=L("predictions"),
    output:
        table=L("eval"),
        # per-image scores (testset, image, metric, value): the report's paired bootstrap over test images
        images=L("eval_images"),
    log:
        LOG("evaluate/{arch}/{policy}/ratio-{ratio}/seed-{seed}.log"),
    benchmark:
        BENCH("evaluate/{arch}/{policy}/ratio-{ratio}/seed-{seed}.tsv")
    params:
        testsets=TESTSETS,
        protocol=PROTOCOL,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/evaluate.py"


rule segmenter_loss:
    # the real-only benchmark segmenters of one seed (every arch, loaded in one job) on every variant's samples: the
    # hardness transfer's evaluators, read by the report alone (the fidelity guard grades with the judges, judge_loss)
    input:
        model=lambda wildcards: [segmenter_path(arch, "real", "0", wildcards.seed, n_real(wildcards)) for arch in ARCHS],
        generated=expand_n(L("generated"), variant=VARIANTS),
    output:
        [L("sample_loss", arch=arch) for arch in ARCHS],
    log:
        LOG("segmenter_loss/seed-{seed}.log"),
    benchmark:
        BENCH("segmenter_loss/seed-{seed}.tsv")
    # only the report reads it
    params:
        # the arch of each model and output, in order
        specs=arch_specs(ARCHS),
        size=SETTINGS.segment.size,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/segmenter_loss.py"


rule judge_loss:
    # The real-only judges' (every arch's, seed feedback.judge_seed) per-sample loss and Dice on one variant's samples:
    # the fidelity guard's grades (rule score) and, for the feedback judge, the transfer matrix's model-specific
    # source (segmenter_loss's script on the judges instead of benchmark segmenters). One job per (seed, variant), so
    # a new variant is graded alone.
    input:
        model=lambda wildcards: [judge_path(arch, wildcards.seed, n_real(wildcards)) for arch in ARCHS],
        generated=L("generated"),
    output:
        [L("judge_loss", arch=arch) for arch in ARCHS],
    log:
        LOG("judge_loss/seed-{seed}/{variant}.log"),
    benchmark:
        BENCH("judge_loss/seed-{seed}/{variant}.tsv")
    # the fidelity grades wait for it (score)
    priority: 1
    params:
        # the arch of each model and output, in order
        specs=arch_specs(ARCHS),
        size=SETTINGS.segment.size,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/segmenter_loss.py"


if FULL_BASELINE:

    # segment.full_data_baseline: an anchored arch's real-only run on every training image, per seed, beside the
    # benchmark's (the same recipe; not a policy: the benchmark tables and contrasts never see it), evaluated like
    # them; the report's reproduction table compares it with the published numbers, like for like
    rule train_full_baseline:
        input:
            manifest=FULL_MANIFEST,
        output:
            model=L("full_model"),
            run=L("full_run"),
            predictions=directory(L("full_predictions")),
        log:
            "logs/train_full_baseline/{arch}/seed-{seed}.log",
        benchmark:
            "results/benchmarks/train_full_baseline/{arch}/seed-{seed}.tsv"
        params:
            specs=lambda wildcards: arch_specs([wildcards.arch]),
            segment=segment_recipe(),
            runs=lambda wildcards: [(wildcards.arch, "real", "0")],
            filter_judges={},
            judge=False,
            report_to=SETTINGS.report_to("segment"),
            testsets=TESTSETS,
            protocol=PROTOCOL,
        threads: 1
        resources:
            mem_mb=8000,
            runtime=720,
            gpu=1,
        conda:
            ENV
        script:
            "../scripts/train_segmenter.py"

    rule evaluate_full_baseline:
        input:
            manifest=FULL_MANIFEST,
            predictions=L("full_predictions"),
        output:
            table=L("full_eval"),
            images=L("full_eval_images"),
        log:
            "logs/evaluate_full_baseline/{arch}/seed-{seed}.log",
        benchmark:
            "results/benchmarks/evaluate_full_baseline/{arch}/seed-{seed}.tsv"
        params:
            testsets=TESTSETS,
            protocol=PROTOCOL,
        threads: 1
        resources:
            mem_mb=2000,
            runtime=60,
        conda:
            ENV
        script:
            "../scripts/evaluate.py"
