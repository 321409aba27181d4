# Prototype discrepancy of every sample under every backbone (real training images are the reference), the
# fidelity guard (does a sample still show its polyp?), then training subsets per policy, ratio and seed.


rule score:
    # One job per set (real, each generated variant): the fidelity guard, then the scores, the held-out backbone
    # (filter.fidelity_backbone) loaded once for both. real: the guard's calibration, the real training images'
    # separations; a generated variant: every sample graded, the grades joined into its score table.
    input:
        unpack(fidelity_input),
        manifest="results/data/manifest.csv",
        samples=score_input,
        prototypes=expand("results/prototypes/{backbone}.safetensors", backbone=BACKBONES),
    output:
        scores="results/scores/{scored}.csv",
        # the samples' backbone features (rows as in the CSV), for the report's real-vs-generated PCA
        features="results/scores/{scored}.features.safetensors",
        # real: sample_id, separation (the calibration); a generated variant: its grades (hardgen.fidelity)
        fidelity="results/fidelity/{scored}.csv",
    log:
        "logs/score/{scored}.log",
    benchmark:
        "results/benchmarks/score/{scored}.tsv"
    # beside generation (5): the real images' calibration is ready when the samples are graded
    priority: 5
    params:
        sets=lambda wildcards: [wildcards.scored],
        backbones=config["backbones"],
        fidelity_backbone=FIDELITY_BACKBONE,
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


if BATCH_RUNS:

    # segment.batch_runs (the CPU demo): every generated variant scored in one job, the backbones loaded once. No
    # wait is added: grading needs the real-only judges' losses on every variant (sample_losses), so each
    # variant's score job waited for all of generation anyway. Same library call per variant, same files.
    ruleorder: score_variants > score

    rule score_variants:
        input:
            sample_losses=guard_loss_tables(),
            reference="results/fidelity/real.csv",
            manifest="results/data/manifest.csv",
            samples=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
            prototypes=expand("results/prototypes/{backbone}.safetensors", backbone=BACKBONES),
        output:
            scores=expand("results/scores/{variant}.csv", variant=VARIANTS),
            features=expand("results/scores/{variant}.features.safetensors", variant=VARIANTS),
            fidelity=expand("results/fidelity/{variant}.csv", variant=VARIANTS),
        log:
            "logs/score_variants.log",
        benchmark:
            "results/benchmarks/score_variants.tsv"
        params:
            sets=VARIANTS,
            backbones=config["backbones"],
            fidelity_backbone=FIDELITY_BACKBONE,
            pad=config["hard"]["crop_pad"],
            resolution=config["model"]["resolution"],
        threads: 1
        resources:
            mem_mb=8000,
            runtime=120 * len(VARIANTS),
            gpu=1,
        conda:
            ENV
        script:
            "../scripts/score.py"


rule filter:
    # segment.batch_runs (the demo): every subset of one segmenter seed in one job, the granularity of the
    # train_segmenters jobs that read them (selection takes milliseconds, a job's start-up most of a second), so
    # forcing filter rewrites all of a seed's subsets. Otherwise one job per subset: one run's subset (a new policy
    # or ratio) is made without rewriting the others, whose segmenters would train again.
    input:
        manifest="results/data/manifest.csv",
        scores=expand("results/scores/{scored}.csv", scored=SCORED_VARIANTS),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        (
            batch_patterns("results/subsets/{policy}/ratio-{ratio}/seed-{{seed}}.csv")
            if BATCH_RUNS
            else ["results/subsets/{policy}/ratio-{ratio}/seed-{seed}.csv"]
        ),
    log:
        "logs/filter/seed-{seed}.log" if BATCH_RUNS else "logs/filter/{policy}/ratio-{ratio}/seed-{seed}.log",
    benchmark:
        (
            "results/benchmarks/filter/seed-{seed}.tsv"
            if BATCH_RUNS
            else "results/benchmarks/filter/{policy}/ratio-{ratio}/seed-{seed}.tsv"
        )
    params:
        # the (policy, ratio) of each output, in output order
        runs=lambda wildcards: SYNTHETIC_RUNS if BATCH_RUNS else [(wildcards.policy, wildcards.ratio)],
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
