# Mask -> condition image (canny edges or the mask), for every training mask plus new layouts.


rule make_conditions:
    input:
        manifest=L("manifest"),
    output:
        table=L("conditions"),
        images=directory(L("condition_images")),
        masks=directory(L("condition_masks")),
    log:
        LOG("make_conditions.log"),
    benchmark:
        BENCH("make_conditions.tsv")
    # the critical path to generation first (snakemake --cores N runs the highest-priority ready job)
    priority: 20
    params:
        kind=SETTINGS.condition.type,
        layouts_per_mask=SETTINGS.condition.layouts_per_mask,
        size=SETTINGS.model.resolution,
        low=SETTINGS.condition.canny_low,
        high=SETTINGS.condition.canny_high,
        seed=SETTINGS.seed,
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
        conditions=L("conditions"),
        manifest=L("manifest"),
    output:
        table=L("squash_conditions"),
        images=directory(L("squash_images")),
        masks=directory(L("squash_masks")),
    log:
        LOG("generation_conditions.log"),
    benchmark:
        BENCH("generation_conditions.tsv")
    priority: 15
    params:
        fit=SETTINGS.generation.condition_fit,
        kind=SETTINGS.condition.type,
        size=SETTINGS.model.resolution,
        low=SETTINGS.condition.canny_low,
        high=SETTINGS.condition.canny_high,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/generation_conditions.py"
