# Control-LoRA training: plain (control-lora-v3), hard (prototype discrepancy), feedback (one-segmenter baseline).
# Each rule launches through accelerate with as many processes as the job's GPUs (resources.gpu).


rule train_control_lora:
    input:
        base=base_model_input,
        conditions="results/conditions/conditions.csv",
        manifest="results/data/manifest.csv",
    output:
        lora=lora_path("plain"),
    log:
        "logs/train_control_lora.log",
    benchmark:
        "results/benchmarks/train_control_lora.tsv"
    params:
        base=BASE_MODEL,
        model=config["model"],
        lora=config["lora"],
        train=config["train"],
        seed=config["seed"],
    threads: 2
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
        conditions="results/conditions/conditions.csv",
        manifest="results/data/manifest.csv",
        init_lora=lora_path("plain"),
        # only the in-loss backbones: the held-out ones never reach the generator
        prototypes=expand("results/prototypes/{backbone}.safetensors", backbone=LOSS_BACKBONES),
    output:
        lora=lora_path("hard"),
    log:
        "logs/train_hard_lora.log",
    benchmark:
        "results/benchmarks/train_hard_lora.tsv"
    params:
        base=BASE_MODEL,
        model=config["model"],
        lora=config["lora"],
        train=config["train"],
        hard=config["hard"],
        backbones=config["backbones"],
        seed=config["seed"],
    threads: 2
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
        conditions="results/conditions/conditions.csv",
        manifest="results/data/manifest.csv",
        init_lora=lora_path("plain"),
        segmenter=judge_path(),
    output:
        lora=lora_path("feedback"),
    log:
        "logs/train_feedback_lora.log",
    benchmark:
        "results/benchmarks/train_feedback_lora.tsv"
    params:
        base=BASE_MODEL,
        model=config["model"],
        lora=config["lora"],
        train=config["train"],
        feedback=config["feedback"],
        hard=config["hard"],
        segmenter=config["segment"]["archs"][JUDGE],
        segment_size=config["segment"]["size"],
        seed=config["seed"],
    threads: 2
    resources:
        mem_mb=24000,
        runtime=720,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/train_feedback_lora.py"
