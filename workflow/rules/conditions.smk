# Mask -> condition image (canny edges or the mask), for every training mask plus new layouts.


rule make_conditions:
    input:
        manifest="results/data/manifest.csv",
    output:
        table="results/conditions/conditions.csv",
        images=directory("results/conditions/images"),
        masks=directory("results/conditions/masks"),
    log:
        "logs/make_conditions.log",
    benchmark:
        "results/benchmarks/make_conditions.tsv"
    # the critical path to generation first (snakemake --cores N runs the highest-priority ready job)
    priority: 20
    params:
        kind=config["condition"]["type"],
        layouts_per_mask=config["condition"]["layouts_per_mask"],
        size=config["model"]["resolution"],
        low=config["condition"]["canny_low"],
        high=config["condition"]["canny_high"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/make_conditions.py"


# generation.condition_fit squash: the authors' sampling fit (the whole mask resized to the resolution) for the
# conditions generation samples from; training keeps the cropped ones above.
rule generation_conditions:
    input:
        conditions="results/conditions/conditions.csv",
        manifest="results/data/manifest.csv",
    output:
        table="results/conditions/squash/conditions.csv",
        images=directory("results/conditions/squash/images"),
        masks=directory("results/conditions/squash/masks"),
    log:
        "logs/generation_conditions.log",
    benchmark:
        "results/benchmarks/generation_conditions.tsv"
    priority: 15
    params:
        fit=config["generation"]["condition_fit"],
        kind=config["condition"]["type"],
        size=config["model"]["resolution"],
        low=config["condition"]["canny_low"],
        high=config["condition"]["canny_high"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/generation_conditions.py"
