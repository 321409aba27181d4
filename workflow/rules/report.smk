# Tables, plots and the snakemake --report deliverable.


rule report:
    input:
        manifest="results/data/manifest.csv",
        conditions="results/conditions/conditions.csv",
        evals=eval_tables(),
        # per-image scores beside each evaluation: the paired bootstrap of single-seed contrasts
        eval_images=eval_image_tables(),
        # published anchors (report.anchors): a tracked input, so new anchors rewrite the report only
        anchors=anchors_input(),
        # the guard's grades of each generated variant: fidelity.csv names the judges that made them
        fidelity=expand("results/fidelity/{variant}.csv", variant=VARIANTS),
        runs=run_records(),
        scores=expand("results/scores/{scored}.csv", scored=SCORED_VARIANTS),
        features=expand("results/scores/{scored}.features.safetensors", scored=SCORED_VARIANTS),
        # the feedback judge's loss on every generated sample: the transfer matrix's model-specific source
        judge_loss=f"results/judge/{JUDGE}/seed-{JUDGE_SEED}/sample_loss.csv",
        sample_losses=sample_loss_tables(),
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
        train_logs=expand("results/lora/{variant}/train_log.csv", variant=LORAS),
    output:
        benchmark=report("results/tables/benchmark.csv", category="Benchmark", caption="../report/benchmark.rst"),
        benchmark_md=report("results/tables/benchmark.md", category="Benchmark", caption="../report/benchmark_md.rst"),
        runs=report("results/tables/runs.csv", category="Benchmark", caption="../report/runs.rst"),
        reproduction=report(
            "results/tables/reproduction.csv", category="Benchmark", caption="../report/reproduction.rst"
        ),
        contrasts=report("results/tables/contrasts.csv", category="Benchmark", caption="../report/contrasts.rst"),
        hardness=report("results/tables/hardness.csv", category="Hardness", caption="../report/hardness.rst"),
        transfer=report("results/tables/hardness_transfer.csv", category="Hardness", caption="../report/transfer.rst"),
        transfer_matrix=report(
            "results/tables/transfer_matrix.csv", category="Hardness", caption="../report/transfer_matrix.rst"
        ),
        fidelity=report("results/tables/fidelity.csv", category="Hardness", caption="../report/fidelity.rst"),
        # every job but the report has finished when it runs, so its benchmark file is there
        timings=report("results/tables/timings.csv", category="Timings", caption="../report/timings.rst"),
        variant_cost=report("results/tables/variant_cost.csv", category="Timings", caption="../report/variant_cost.rst"),
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
        published={arch: spec.get("published") for arch, spec in config["segment"]["archs"].items()},
        reproduce_tolerance=config["report"]["reproduce_tolerance"],
        primary_contrast=config["report"]["primary_contrast"],
        loss_backbones=config["hard"]["loss_backbones"],
        min_fidelity=config["filter"]["min_fidelity"],
        judge_job=f"{JUDGE}/seed-{JUDGE_SEED}",  # the feedback judge's train_judge job, part of feedback's cost
        variants=VARIANTS,
        demo=DEMO or TINY,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/report.py"


# Do the samples follow their masks? Red chromaticity inside vs outside each sample's own mask against a shuffled
# mask, as a fraction of the real training crops' margin, and the endoscope's dark corners (hardgen.mask_following).
rule mask_following:
    input:
        manifest="results/data/manifest.csv",
        conditions="results/conditions/conditions.csv",
        generated=expand("results/generated/{variant}/manifest.csv", variant=VARIANTS),
    output:
        report("results/tables/mask_following.csv", category="Hardness", caption="../report/mask_following.rst"),
    log:
        "logs/mask_following.log",
    benchmark:
        "results/benchmarks/mask_following.tsv"
    params:
        resolution=config["model"]["resolution"],
        seed=config["seed"],  # the shuffled masks' derangement
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/mask_following.py"
