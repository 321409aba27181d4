# The generation plan (generation.per_mask samples per condition, allocated uniformly or by the real-trained judges'
# loss), then batched generation of the planned samples, split into generation.shards jobs that can run on
# different GPUs. Images are named by sample id and seeded from it, so they do not depend on the shard count; every
# variant generates the same sample ids. mined and guided sample the plain LoRA (no training job of their own);
# each variant's shards are separate generate jobs, so results/benchmarks/generate/<variant>/ holds its cost.


rule allocate:
    input:
        conditions="results/conditions/conditions.csv",
        manifest="results/data/manifest.csv",
        judges=allocation_judges,
    output:
        "results/generated/plan.csv",
    log:
        "logs/allocate.log",
    benchmark:
        "results/benchmarks/allocate.tsv"
    # every generate job waits for the plan
    priority: 15
    params:
        per_mask=config["generation"]["per_mask"],
        allocation=config["generation"]["allocation"],
        seed=config["seed"],
        archs=config["segment"]["archs"],
        size=config["segment"]["size"],
    threads: 1
    resources:
        # on the CPU: the judges only run a forward pass over the real training images (minutes at 352 px)
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/allocate.py"


rule generate:
    input:
        base=base_model_input,
        lora=generation_lora,
        conditions=generation_conditions_input,
        plan="results/generated/plan.csv",
        prototypes=generation_prototypes,
    output:
        "results/generated/{variant}/shard-{shard}.csv",
    log:
        "logs/generate/{variant}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/generate/{variant}/shard-{shard}.tsv"
    # with the real-only benchmark segmenters and the real images' scores (5): all of them must be done before the
    # samples are graded, and the LoRA training (10 and up) comes first
    priority: 5
    params:
        base=BASE_MODEL,
        model=config["model"],
        generation=config["generation"],
        seed=config["seed"],
        # the judge of the training-free variants (so only their jobs rerun when it changes)
        backbones=lambda wildcards: (
            {key: config["backbones"][key] for key in LOSS_BACKBONES} if wildcards.variant in TRAINING_FREE else {}
        ),
        pad=lambda wildcards: (config["hard"]["crop_pad"] if wildcards.variant in TRAINING_FREE else None),
        out_dir=lambda wildcards: f"results/generated/{wildcards.variant}/shard-{wildcards.shard}",
    threads: 1
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/generate.py"


rule generated_manifest:
    input:
        shards=expand("results/generated/{{variant}}/shard-{shard}.csv", shard=SHARDS),
        plan="results/generated/plan.csv",
    output:
        "results/generated/{variant}/manifest.csv",
    log:
        "logs/generated_manifest/{variant}.log",
    benchmark:
        "results/benchmarks/generated_manifest/{variant}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/generated_manifest.py"
