# Batched generation, one image per condition, split into generation.shards jobs that can run on different GPUs.
# Images are named by sample id and seeded from it, so they do not depend on the shard count.


rule generate:
    input:
        base=base_model_input,
        lora=lambda wildcards: lora_path(wildcards.variant),
        conditions="results/conditions/conditions.csv",
    output:
        "results/generated/{variant}/shard-{shard}.csv",
    log:
        "logs/generate/{variant}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/generate/{variant}/shard-{shard}.tsv"
    params:
        base=BASE_MODEL,
        model=config["model"],
        generation=config["generation"],
        seed=config["seed"],
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
        conditions="results/conditions/conditions.csv",
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
