# Segmentation benchmark: each architecture x policy x seed trains on real + its subset, then is evaluated on
# the five test sets; the real-trained models also score every generated sample (does hardness transfer?).


rule train_segmenter:
    input:
        manifest="results/data/manifest.csv",
        subset=subset_input,
    output:
        model="results/segment/{arch}/{policy}/seed-{seed}/model.safetensors",
    log:
        "logs/train_segmenter/{arch}/{policy}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/train_segmenter/{arch}/{policy}/seed-{seed}.tsv"
    params:
        spec=lambda wildcards: config["segment"]["archs"][wildcards.arch],
        segment=config["segment"],
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
    input:
        manifest="results/data/manifest.csv",
        model="results/segment/{arch}/{policy}/seed-{seed}/model.safetensors",
    output:
        "results/eval/{arch}/{policy}/seed-{seed}.csv",
    log:
        "logs/evaluate/{arch}/{policy}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/evaluate/{arch}/{policy}/seed-{seed}.tsv"
    params:
        spec=lambda wildcards: config["segment"]["archs"][wildcards.arch],
        size=config["segment"]["size"],
        testsets=TESTSETS,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/evaluate.py"


rule segmenter_loss:
    input:
        model=lambda wildcards: segmenter_path(wildcards.arch, "real", SEEDS[0]),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        "results/eval/{arch}/sample_loss.csv",
    log:
        "logs/segmenter_loss/{arch}.log",
    benchmark:
        "results/benchmarks/segmenter_loss/{arch}.tsv"
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
