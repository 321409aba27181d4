# Segmentation benchmark: each architecture x policy x seed trains on real + its subset for the same number of
# iterations (segment.iterations batches), then is evaluated on the five test sets; the real-trained models of
# every seed also score every generated sample (does hardness transfer?). The feedback generator's judge is a
# separate real-only run (train_judge), so the transfer table never scores samples with the model the feedback
# LoRA was trained against.


rule train_segmenter:
    input:
        manifest="results/data/manifest.csv",
        subset=subset_input,
    output:
        model="results/segment/{arch}/{policy}/seed-{seed}/model.safetensors",
        run="results/segment/{arch}/{policy}/seed-{seed}/run.json",
        # PraNet's test script's maps, written while the model is in memory (no second model load)
        predictions=directory("results/predictions/{arch}/{policy}/seed-{seed}"),
    log:
        "logs/train_segmenter/{arch}/{policy}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/train_segmenter/{arch}/{policy}/seed-{seed}.tsv"
    params:
        spec=lambda wildcards: config["segment"]["archs"][wildcards.arch],
        segment=config["segment"],
        policy=lambda wildcards: wildcards.policy,
        judge=False,
        testsets=TESTSETS,
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
    params:
        spec=lambda wildcards: config["segment"]["archs"][wildcards.arch],
        segment=config["segment"],
        policy="real",
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


rule evaluate:
    # The polyp toolbox's scores of the saved maps (hardgen evaluate-maps' code): no model, no torch, so a
    # rerun (`--forcerun evaluate`) rescores without retraining.
    input:
        manifest="results/data/manifest.csv",
        predictions="results/predictions/{arch}/{policy}/seed-{seed}",
    output:
        table="results/eval/{arch}/{policy}/seed-{seed}.csv",
    log:
        "logs/evaluate/{arch}/{policy}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{arch}/{policy}/seed-{seed}.tsv"
    params:
        testsets=TESTSETS,
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
        model=lambda wildcards: segmenter_path(wildcards.arch, "real", wildcards.seed),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        "results/eval/{arch}/seed-{seed}/sample_loss.csv",
    log:
        "logs/segmenter_loss/{arch}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/segmenter_loss/{arch}/seed-{seed}.tsv"
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
