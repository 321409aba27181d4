# The base generator (model.base: tiny, the demo's default: a random-init tiny SD built here; a local diffusers
# folder or hub id is used as it is) and the real-feature prototypes per backbone.


if TINY:

    rule base_model:
        output:
            directory("results/base_model"),
        log:
            "logs/base_model.log",
        benchmark:
            "results/benchmarks/base_model.tsv"
        params:
            config_dir=config["model"]["tiny_config"],
            seed=config["seed"],
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            ENV
        script:
            "../scripts/base_model.py"


rule prototype:
    input:
        manifest="results/data/manifest.csv",
    output:
        "results/prototypes/{backbone}.safetensors",
    log:
        "logs/prototype/{backbone}.log",
    benchmark:
        "results/benchmarks/prototype/{backbone}.tsv"
    params:
        spec=lambda wildcards: config["backbones"][wildcards.backbone],
        pad=config["hard"]["crop_pad"],
        resolution=config["model"]["resolution"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/prototype.py"
