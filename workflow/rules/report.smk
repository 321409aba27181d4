# Tables, plots and the snakemake --report deliverable.


rule report:
    input:
        manifest="results/data/manifest.csv",
        conditions="results/conditions/conditions.csv",
        evals=eval_tables(),
        scores=expand("results/scores/{scored}.csv", scored=SCORED_VARIANTS),
        sample_losses=expand("results/eval/{arch}/sample_loss.csv", arch=ARCHS),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        benchmark=report(
            "results/tables/benchmark.csv", category="Benchmark", caption="../report/benchmark.rst"
        ),
        benchmark_md="results/tables/benchmark.md",
        hardness=report("results/tables/hardness.csv", category="Hardness", caption="../report/hardness.rst"),
        transfer=report(
            "results/tables/hardness_transfer.csv", category="Hardness", caption="../report/transfer.rst"
        ),
        plots=report(
            directory("results/plots"),
            patterns=["{name}.png"],
            category="Plots",
            caption="../report/plots.rst",
        ),
    log:
        "logs/report.log",
    benchmark:
        "results/benchmarks/report.tsv"
    params:
        archs=ARCHS,
        policies=POLICIES,
        seeds=SEEDS,
        testsets=TESTSETS,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/report.py"
