# The base generator (model.base: tiny = a random-init tiny SD built here, for the fast tests; a local diffusers
# folder, such as the demo's pre-trained resources/tiny-sd-polyp, or a hub id is used as it is) and the real-feature prototypes per backbone.


if TINY:

    rule base_model:
        output:
            directory(L("base_model")),
        log:
            "logs/base_model.log",
        benchmark:
            "results/benchmarks/base_model.tsv"
        params:
            config_dir=SETTINGS.model.tiny_config,
            seed=SETTINGS.seed,
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            ENV
        script:
            "../scripts/base_model.py"


rule prototype:
    # Every backbone's prototype in one job: a job's cost is mostly torch/timm start-up, not the few real crops.
    # Changing one backbone's spec reruns this job, so every prototype is rewritten; train_hard_lora already reruns
    # on any backbones change (its params), and the training-free variants' generate jobs rerun with it. A backbone
    # with a prototype file of the user's (backbones.<key>.prototype) is not computed here; with every backbone's
    # given, no job needs this rule.
    input:
        manifest=L("manifest"),
    output:
        expand_n(L("prototype"), backbone=COMPUTED_PROTOTYPES),
    log:
        LOG("prototype.log"),
    benchmark:
        BENCH("prototype.tsv")
    # the hard LoRA (its margins) and the training-free variants wait for it: not behind the benchmark segmenters
    priority: 15
    params:
        backbones=extractor_specs(COMPUTED_PROTOTYPES),
        # backbones.<key>.prototype_crop: how the real images are cropped (hardgen | native, the authors' script)
        recipes={key: SETTINGS.backbones[key].params("prototype") for key in COMPUTED_PROTOTYPES},
        pad=SETTINGS.hard.crop_pad,
        resolution=SETTINGS.model.resolution,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/prototype.py"
