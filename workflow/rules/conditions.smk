# Mask -> condition image (canny edges or the mask), for every training mask plus new layouts.


rule make_conditions:
    input:
        manifest=L("manifest"),
    output:
        table=L("conditions"),
        images=directory(L("condition_images")),
        masks=directory(L("condition_masks")),
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
