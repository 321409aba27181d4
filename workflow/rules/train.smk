# Control-LoRA training: plain (control-lora-v3), hard (prototype discrepancy), feedback (one-segmenter baseline).
# Each rule launches through accelerate with as many processes as the job's GPUs (resources.gpu).


rule train_control_lora:
    input:
        base=base_model_input,
        conditions=L("conditions"),
        manifest=L("manifest"),
        init_weights=plain_init_input,
    output:
        lora=lora_path("plain"),
        train_log=L("train_log", variant="plain"),
        validation=report(
            L("validation", variant="plain"),
            category="Generators",
            subcategory="plain",
            caption="../report/validation.rst",
        ),
        validation_metrics=L("validation_metrics", variant="plain"),
    log:
        LOG("train_control_lora.log"),
    benchmark:
        BENCH("train_control_lora.tsv")
    # the critical path to generation first (snakemake --cores N runs the highest-priority ready job)
    priority: 20
    params:
        base=BASE_MODEL,
        model=MODEL,
        lora=LORA,
        train=PLAIN_TRAIN,
        # train.report_to and train.validation_steps (hardgen.config.settings.Settings.tracking)
        tracking=SETTINGS.tracking("plain"),
        seed=SETTINGS.seed,
        condition_type=SETTINGS.condition.type,
    # one thread like every job: a 2-thread job on 2 cores waits until both are free at once, which a stream of
    # 1-thread jobs rarely leaves (measured: it started 35 s late)
    threads: 1
    resources:
        mem_mb=16000,
        runtime=720,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/train_control_lora.py"


rule train_hard_lora:
    input:
        base=base_model_input,
        conditions=L("conditions"),
        manifest=L("manifest"),
        init_lora=finetune_init_input("hard"),
        # only the in-loss backbones: the held-out ones never reach the generator
        prototypes=prototype_files(LOSS_BACKBONES),
    output:
        lora=lora_path("hard"),
        train_log=L("train_log", variant="hard"),
        validation=report(
            L("validation", variant="hard"),
            category="Generators",
            subcategory="hard",
            caption="../report/validation.rst",
        ),
        validation_metrics=L("validation_metrics", variant="hard"),
    log:
        LOG("train_hard_lora.log"),
    benchmark:
        BENCH("train_hard_lora.tsv")
    # one thread: hard and feedback fine-tune side by side (and beside the plain variants' generation) on a
    # 2-core machine; both are on the DAG's critical path, so they start before the generation jobs that wait
    priority: 10
    params:
        base=BASE_MODEL,
        model=MODEL,
        lora=LORA,
        train=FINETUNE_TRAIN,
        hard=SETTINGS.hard.params("hard"),
        # hard.report_to / validation_steps, or train's where null: only a change of what it uses reruns it
        tracking=SETTINGS.tracking("hard"),
        # only the in-loss backbones reach the generator
        backbones=backbone_specs(LOSS_BACKBONES, "hard"),
        seed=SETTINGS.seed,
        condition_type=SETTINGS.condition.type,
    threads: 1
    resources:
        mem_mb=24000,
        runtime=720,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/train_hard_lora.py"


rule train_feedback_lora:
    input:
        base=base_model_input,
        conditions=L("conditions"),
        manifest=L("manifest"),
        init_lora=finetune_init_input("feedback"),
        segmenter=judge_path(),
    output:
        lora=lora_path("feedback"),
        train_log=L("train_log", variant="feedback"),
        validation=report(
            L("validation", variant="feedback"),
            category="Generators",
            subcategory="feedback",
            caption="../report/validation.rst",
        ),
        validation_metrics=L("validation_metrics", variant="feedback"),
    log:
        LOG("train_feedback_lora.log"),
    benchmark:
        BENCH("train_feedback_lora.tsv")
    # one thread: hard and feedback fine-tune side by side (and beside the plain variants' generation) on a
    # 2-core machine; both are on the DAG's critical path, so they start before the generation jobs that wait
    priority: 10
    params:
        base=BASE_MODEL,
        model=MODEL,
        lora=LORA,
        train=FINETUNE_TRAIN,
        feedback=SETTINGS.feedback.params("feedback"),
        tracking=SETTINGS.tracking("feedback"),
        crop_pad=SETTINGS.hard.crop_pad,
        segmenter=arch_spec(JUDGE),
        segment_size=SETTINGS.segment.size,
        seed=SETTINGS.seed,
        condition_type=SETTINGS.condition.type,
    threads: 1
    resources:
        mem_mb=24000,
        runtime=720,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/train_feedback_lora.py"
