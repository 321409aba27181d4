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
    params:
        kind=config["condition"]["type"],
        layouts_per_mask=config["condition"].get("layouts_per_mask", 0),
        size=config["model"]["resolution"],
        low=config["condition"].get("canny_low", 100),
        high=config["condition"].get("canny_high", 200),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/make_conditions.py"
