# Prototype discrepancy of every sample under every backbone (real training images are the reference),
# then training subsets per policy.


rule score:
    input:
        manifest="results/data/manifest.csv",
        samples=score_input,
        prototypes=expand("results/prototypes/{backbone}.safetensors", backbone=BACKBONES),
    output:
        "results/scores/{scored}.csv",
    log:
        "logs/score/{scored}.log",
    benchmark:
        "results/benchmarks/score/{scored}.tsv"
    params:
        backbones=config["backbones"],
        pad=config["hard"]["crop_pad"],
        resolution=config["model"]["resolution"],
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
    input:
        scores=expand("results/scores/{scored}.csv", scored=SCORED_VARIANTS),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        "results/subsets/{policy}/seed-{seed}.csv",
    log:
        "logs/filter/{policy}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/filter/{policy}/seed-{seed}.tsv"
    params:
        band=config["filter"]["band"],
        score_backbone=config["filter"]["score_backbone"],
        base_seed=config["seed"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/filter.py"
