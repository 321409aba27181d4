# Dataset: the procedural demo set (only when data.root is unset) and the validated manifest.


rule demo_data:
    output:
        directory("results/data/demo"),
    log:
        "logs/demo_data.log",
    benchmark:
        "results/benchmarks/demo_data.tsv"
    params:
        testsets=TESTSETS,
        demo=config["data"]["demo"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/demo_data.py"


rule prepare_data:
    input:
        demo_data_input,
    output:
        manifest="results/data/manifest.csv",
        # which real training images data.train_subset keeps (all when null), with their seeded rank
        subset="results/data/train_subset.csv",
    log:
        "logs/prepare_data.log",
    benchmark:
        "results/benchmarks/prepare_data.tsv"
    params:
        root=DATA_ROOT,
        testsets=TESTSETS,
        expected_sizes=config["data"]["expected_sizes"],
        train_subset=config["data"]["train_subset"],
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/prepare_data.py"
