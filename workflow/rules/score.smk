# Prototype discrepancy of every sample under every backbone (real training images are the reference), the
# fidelity guard (does a sample still show its polyp?), then training subsets per policy, ratio and seed.


rule fidelity_reference:
    # The real training images' separation under the held-out backbone: the guard's calibration (median -> 1).
    input:
        manifest="results/data/manifest.csv",
    output:
        "results/fidelity/real.csv",
    log:
        "logs/fidelity_reference.log",
    benchmark:
        "results/benchmarks/fidelity_reference.tsv"
    params:
        key=FIDELITY_BACKBONE,
        backbone=config["backbones"][FIDELITY_BACKBONE],
        resolution=config["model"]["resolution"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/fidelity.py"


rule fidelity:
    # Every generated sample graded: the real-only benchmark segmenters' Dice against its conditioning mask (from
    # segmenter_loss; never the feedback judge) and the held-out backbone's calibrated feature separation.
    input:
        generated="results/generated/{variant}/manifest.csv",
        sample_losses=sample_loss_tables(),
        reference="results/fidelity/real.csv",
    output:
        "results/fidelity/{variant}.csv",
    log:
        "logs/fidelity/{variant}.log",
    benchmark:
        "results/benchmarks/fidelity/{variant}.tsv"
    params:
        key=FIDELITY_BACKBONE,
        backbone=config["backbones"][FIDELITY_BACKBONE],
        resolution=config["model"]["resolution"],
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/fidelity.py"


rule score:
    input:
        manifest="results/data/manifest.csv",
        samples=score_input,
        fidelity=fidelity_input,
        prototypes=expand("results/prototypes/{backbone}.safetensors", backbone=BACKBONES),
    output:
        scores="results/scores/{scored}.csv",
        # the samples' backbone features (rows as in the CSV), for the report's real-vs-generated PCA
        features="results/scores/{scored}.features.safetensors",
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
        manifest="results/data/manifest.csv",
        scores=expand("results/scores/{scored}.csv", scored=SCORED_VARIANTS),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        "results/subsets/{policy}/ratio-{ratio}/seed-{seed}.csv",
    log:
        "logs/filter/{policy}/ratio-{ratio}/seed-{seed}.log",
    benchmark:
        "results/benchmarks/filter/{policy}/ratio-{ratio}/seed-{seed}.tsv"
    params:
        band=config["filter"]["band"],
        score_backbone=config["filter"]["score_backbone"],
        min_fidelity=config["filter"]["min_fidelity"],
        base_seed=config["seed"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/filter.py"
