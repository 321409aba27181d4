# The generation plan (generation.per_mask samples per condition, allocated uniformly or by the real-trained judges'
# loss), then batched generation of the planned samples, split into generation.shards jobs that can run on
# different GPUs. Images are named by sample id and seeded from it, so they do not depend on the shard count; every
# variant generates the same sample ids. mined, guided and inpaint sample the plain LoRA, hard_inpaint the hard one (no
# training job of their own); each variant's shards are separate generate jobs, so results/benchmarks/generate/<variant>/
# holds its cost.


rule allocate:
    input:
        conditions=L("conditions"),
        manifest=L("manifest"),
        judges=allocation_judges,
    output:
        L("plan"),
    log:
        LOG("allocate.log"),
    benchmark:
        BENCH("allocate.tsv")
    # every generate job waits for the plan
    priority: 15
    params:
        per_mask=SETTINGS.generation.per_mask,
        allocation=SETTINGS.generation.allocation,
        seed=SETTINGS.seed,
        # the judges' archs (hardness allocation only: uniform loads none)
        archs=arch_specs(ARCHS) if SETTINGS.generation.allocation == "hardness" else {},
        size=SETTINGS.segment.size if SETTINGS.generation.allocation == "hardness" else None,
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
        # the inpainting variants' frames (the data manifest, the lesion-free frames' folder); empty for the others
        unpack(generation_frames),
        base=base_model_input,
        lora=generation_lora,
        conditions=generation_conditions_input,
        plan=L("plan"),
        prototypes=generation_prototypes,
    output:
        L("shard"),
    log:
        LOG("generate/{variant}/shard-{shard}.log"),
    benchmark:
        BENCH("generate/{variant}/shard-{shard}.tsv")
    # with the real-only benchmark segmenters and the real images' scores (5): all of them must be done before the
    # samples are graded, and the LoRA training (10 and up) comes first
    priority: 5
    params:
        base=BASE_MODEL,
        model=MODEL,
        # only the generation.* keys of this variant's sampling (hardgen.core.registry), so a new variant, per_mask or
        # allocation (read by allocate) reruns no other variant's generation
        generation=lambda wildcards: generation_params(wildcards.variant),
        seed=SETTINGS.seed,
        # the judge of the training-free variants (so only their jobs rerun when it changes)
        backbones=lambda wildcards: (extractor_specs(LOSS_BACKBONES) if wildcards.variant in TRAINING_FREE else {}),
        pad=lambda wildcards: (SETTINGS.hard.crop_pad if wildcards.variant in TRAINING_FREE else None),
        # the inpainting variants make each sample's condition image from its label (condition.type, Canny thresholds)
        condition=inpaint_condition,
        out_dir=lambda wildcards: L(
            "shard_dir", variant=wildcards.variant, shard=wildcards.shard, n_real=n_real(wildcards)
        ),
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
        shards=[L("shard", shard=shard) for shard in SHARDS],
        plan=L("plan"),
    output:
        L("generated"),
    log:
        LOG("generated_manifest/{variant}.log"),
    benchmark:
        BENCH("generated_manifest/{variant}.tsv")
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/generated_manifest.py"
