# Segmentation benchmark: each architecture x policy x ratio x seed trains on real + its subset (round(ratio x real)
# synthetic images; real: ratio 0) for the same number of iterations (segment.iterations batches), then is evaluated
# on the five test sets; the real-trained models of every seed also score every generated sample (does hardness
# transfer?) and grade it for the fidelity guard (Dice against its conditioning mask). The feedback generator's judge is a
# separate real-only run (train_judge), so the transfer table never scores samples with the model the feedback
# LoRA was trained against.


rule train_segmenter:
    input:
        manifest="results/data/manifest.csv",
        subset=subset_input,
        judges=lambda wildcards: list(run_filter_judges(wildcards).values()),
    output:
        model="results/segment/{arch}/{policy}/ratio-{ratio}/seed-{seed}/model.safetensors",
        run="results/segment/{arch}/{policy}/ratio-{ratio}/seed-{seed}/run.json",
        # PraNet's test script's maps, written while the model is in memory (no second model load)
        predictions=directory("results/predictions/{arch}/{policy}/ratio-{ratio}/seed-{seed}"),
    log:
        "logs/train_segmenter/{arch}/{policy}/ratio-{ratio}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/train_segmenter/{arch}/{policy}/ratio-{ratio}/seed-{seed}.tsv"
    # beside generation (5), so the real-only models are ready to grade the samples when the last variant is made
    priority: 5
    params:
        specs=config["segment"]["archs"],
        segment=config["segment"],
        runs=lambda wildcards: [(wildcards.arch, wildcards.policy, wildcards.ratio)],
        filter_judges=run_filter_judges,
        judge=False,
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
        manifest="results/data/manifest.csv",
    output:
        model="results/judge/{arch}/seed-{seed}/model.safetensors",
        run="results/judge/{arch}/seed-{seed}/run.json",
    log:
        "logs/train_judge/{arch}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/train_judge/{arch}/seed-{seed}.tsv"
    # the judges feed allocate, which every generate job waits for
    priority: 15
    params:
        specs=config["segment"]["archs"],
        segment=config["segment"],
        runs=lambda wildcards: [(wildcards.arch, "real", "0")],
        filter_judges={},
        judge=True,
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
    # (hardgen.benchmark_runs.train_run) and the same files: only the scheduling changes. train_segmenters trains the
    # synthetic runs of one ratio and seed, every arch (so the jobs are of a size: the CNN's runs take ~1.7x the
    # transformer's) and train_real the real-only runs of one seed; evaluate_runs scores every run's maps of one
    # (arch, seed). The judges stay one job each: the feedback variant's cost (report) includes its judge's job. A
    # test forces the per-run rules on a finished run and gets byte-identical files.
    ruleorder: train_segmenters > train_segmenter
    ruleorder: train_real > train_segmenter
    ruleorder: evaluate_runs > evaluate

    rule train_segmenters:
        input:
            manifest="results/data/manifest.csv",
            # one subset per run, in the order of params.runs
            subset=lambda wildcards: [
                f"results/subsets/{p}/ratio-{r}/seed-{wildcards.seed}.csv" for _, p, r in ratio_runs(wildcards)
            ],
            judges=list(filter_judges(ARCHS).values()),
        output:
            model=run_patterns(
                "results/segment/{arch}/{policy}/ratio-{ratio}/seed-{seed}/model.safetensors", RATIO_RUNS
            ),
            run=run_patterns("results/segment/{arch}/{policy}/ratio-{ratio}/seed-{seed}/run.json", RATIO_RUNS),
            predictions=[
                directory(p)
                for p in run_patterns("results/predictions/{arch}/{policy}/ratio-{ratio}/seed-{seed}", RATIO_RUNS)
            ],
        log:
            "logs/train_segmenters/ratio-{ratio}/seed-{seed}.log",
        benchmark:
            "results/benchmarks/train_segmenters/ratio-{ratio}/seed-{seed}.tsv"
        params:
            specs=config["segment"]["archs"],
            segment=config["segment"],
            runs=ratio_runs,
            filter_judges=filter_judges(ARCHS),
            judge=False,
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
            manifest="results/data/manifest.csv",
        output:
            model=run_patterns("results/segment/{arch}/real/ratio-0/seed-{seed}/model.safetensors", REAL_RUNS),
            run=run_patterns("results/segment/{arch}/real/ratio-0/seed-{seed}/run.json", REAL_RUNS),
            predictions=[
                directory(p) for p in run_patterns("results/predictions/{arch}/real/ratio-0/seed-{seed}", REAL_RUNS)
            ],
        log:
            "logs/train_real/seed-{seed}.log",
        benchmark:
            "results/benchmarks/train_real/seed-{seed}.tsv"
        # beside generation (5), so the real-only models are ready to grade the samples when the last variant is made
        priority: 5
        params:
            specs=config["segment"]["archs"],
            segment=config["segment"],
            runs=REAL_RUNS,
            filter_judges={},
            judge=False,
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
            manifest="results/data/manifest.csv",
            predictions=lambda wildcards: batch_paths(
                "results/predictions/{arch}/{policy}/ratio-{ratio}/seed-{seed}", wildcards, RUNS
            ),
        output:
            table=batch_patterns("results/eval/{{arch}}/{policy}/ratio-{ratio}/seed-{{seed}}.csv", RUNS),
            images=batch_patterns("results/eval/{{arch}}/{policy}/ratio-{ratio}/seed-{{seed}}.images.csv", RUNS),
        log:
            "logs/evaluate_runs/{arch}/seed-{seed}.log",
        benchmark:
            "results/benchmarks/evaluate_runs/{arch}/seed-{seed}.tsv"
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
        manifest="results/data/manifest.csv",
        predictions="results/predictions/{arch}/{policy}/ratio-{ratio}/seed-{seed}",
    output:
        table="results/eval/{arch}/{policy}/ratio-{ratio}/seed-{seed}.csv",
        # per-image scores (testset, image, metric, value): the report's paired bootstrap over test images
        images="results/eval/{arch}/{policy}/ratio-{ratio}/seed-{seed}.images.csv",
    log:
        "logs/evaluate/{arch}/{policy}/ratio-{ratio}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{arch}/{policy}/ratio-{ratio}/seed-{seed}.tsv"
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
    input:
        model=lambda wildcards: segmenter_path(wildcards.arch, "real", "0", wildcards.seed),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        "results/eval/{arch}/seed-{seed}/sample_loss.csv",
    log:
        "logs/segmenter_loss/{arch}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/segmenter_loss/{arch}/seed-{seed}.tsv"
    # the fidelity grades wait for it (score); judge_loss only feeds the report
    priority: 1
    params:
        spec=lambda wildcards: config["segment"]["archs"][wildcards.arch],
        size=config["segment"]["size"],
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
    # The feedback judge's per-sample loss on every generated sample: the model-specific hardness source of the
    # transfer matrix (segmenter_loss's script on the judge instead of a benchmark segmenter).
    input:
        model=lambda wildcards: judge_path(wildcards.arch, wildcards.seed),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        "results/judge/{arch}/seed-{seed}/sample_loss.csv",
    log:
        "logs/judge_loss/{arch}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/judge_loss/{arch}/seed-{seed}.tsv"
    params:
        spec=lambda wildcards: config["segment"]["archs"][wildcards.arch],
        size=config["segment"]["size"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/segmenter_loss.py"
