# Tables, plots and the snakemake --report deliverable.


rule report:
    input:
        manifest=L("manifest"),
        conditions=L("conditions"),
        evals=eval_tables(),
        # per-image scores beside each evaluation: the paired bootstrap of single-seed contrasts
        eval_images=eval_image_tables(),
        # published anchors (report.anchors): a tracked input, so new anchors rewrite the report only
        anchors=anchors_input(),
        # the guard's grades of each generated variant: fidelity.csv names the judges that made them
        fidelity=expand_n(L("fidelity"), scored=VARIANTS),
        runs=run_records(),
        # segment.full_data_baseline: the anchored archs' real-only runs on every training image (their records and
        # scores, in full_baseline_paths' order): the reproduction table's baselines of those archs; empty when off
        full_runs=full_baseline_paths("full_run"),
        full_evals=full_baseline_paths("full_eval"),
        scores=expand_n(L("scores"), scored=SCORED_VARIANTS),
        features=expand_n(L("features"), scored=SCORED_VARIANTS),
        # the feedback judge's loss on every generated sample: the transfer matrix's model-specific source
        judge_loss=expand_n(L("judge_loss", arch=JUDGE, seed=JUDGE_SEED), variant=VARIANTS),
        sample_losses=sample_loss_tables(),
        generated=expand_n(L("generated"), variant=VARIANTS),
        train_logs=expand_n(L("train_log"), variant=LORAS),
        # each LoRA's validation during training (its grids beside it): validation.csv and its plots
        validation=expand_n(L("validation_metrics"), variant=LORAS),
        # do the samples follow their masks (and by which measure): sentences in benchmark.md
        mask_following=L("table", table="mask_following.csv"),
    output:
        benchmark=report(L("table", table="benchmark.csv"), category="Benchmark", caption="../report/benchmark.rst"),
        benchmark_md=report(
            L("table", table="benchmark.md"), category="Benchmark", caption="../report/benchmark_md.rst"
        ),
        runs=report(L("table", table="runs.csv"), category="Benchmark", caption="../report/runs.rst"),
        reproduction=report(
            L("table", table="reproduction.csv"), category="Benchmark", caption="../report/reproduction.rst"
        ),
        contrasts=report(L("table", table="contrasts.csv"), category="Benchmark", caption="../report/contrasts.rst"),
        infeasible=report(L("table", table="infeasible.csv"), category="Benchmark", caption="../report/infeasible.rst"),
        hardness=report(L("table", table="hardness.csv"), category="Hardness", caption="../report/hardness.rst"),
        transfer=report(
            L("table", table="hardness_transfer.csv"), category="Hardness", caption="../report/transfer.rst"
        ),
        transfer_matrix=report(
            L("table", table="transfer_matrix.csv"), category="Hardness", caption="../report/transfer_matrix.rst"
        ),
        fidelity=report(L("table", table="fidelity.csv"), category="Hardness", caption="../report/fidelity.rst"),
        validation=report(
            L("table", table="validation.csv"), category="Generators", caption="../report/validation_metrics.rst"
        ),
        # every job but the report has finished when it runs, so its benchmark file is there
        timings=report(L("table", table="timings.csv"), category="Timings", caption="../report/timings.rst"),
        variant_cost=report(
            L("table", table="variant_cost.csv"), category="Timings", caption="../report/variant_cost.rst"
        ),
        plots=report(
            directory(L("plots")),
            patterns=["{name}.png"],
            category="Plots",
            caption="../report/plots.rst",
        ),
    log:
        LOG("report.log"),
    benchmark:
        BENCH("report.tsv")
    params:
        testsets=TESTSETS,
        # each arch's published model name (segment.archs.<k>.published) for the reproduction table
        published={arch: spec.published for arch, spec in SETTINGS.segment.archs.items()},
        reproduce_tolerance=SETTINGS.report.reproduce_tolerance,
        primary_contrast=SETTINGS.report.value("primary_contrast"),
        loss_backbones=SETTINGS.hard.loss_backbones,
        min_fidelity=SETTINGS.filter.min_fidelity,
        judge_job=f"{JUDGE}/seed-{JUDGE_SEED}",  # the feedback judge's train_judge job, part of feedback's cost
        variants=VARIANTS,
        loras=LORAS,
        demo=DEMO or TINY or SHIPPED_TINY,
        # the run paragraph and the protocol paragraph of benchmark.md (hardgen.report.run_text)
        run=run_description,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/report.py"


# Every model the run builds (the base's UNet, VAE and text encoder(s), each backbone, each segmenter) with its
# parameter count and dtype, counted on the meta device from the configs (hardgen.report.models_table): no weights
# are read, so it costs a few seconds of imports.
rule models_table:
    input:
        base=base_model_input,
    output:
        report(L("models_table"), category="Run", caption="../report/models_table.rst"),
    log:
        "logs/models_table.log",
    params:
        base=BASE_MODEL,
        tiny_config=SETTINGS.model.tiny_config if TINY else None,
        backbones=extractor_specs(BACKBONES),
        archs=arch_specs(ARCHS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/models_table.py"


# Do the samples follow their masks? Two measures, each against the real training crops' same gap: red chromaticity
# (grayscale: the grey level) inside vs outside each sample's own mask against a shuffled mask, and the real-only
# judges' Dice (every segment.archs entry's train_judge at feedback.judge_seed) against the own vs the shuffled mask;
# the endoscope's dark corners. A measure the real images do not validate is written undefined, with its reason
# (hardgen.scoring.mask_following).
rule mask_following:
    input:
        manifest=L("manifest"),
        conditions=L("conditions"),
        generated=expand_n(L("generated"), variant=VARIANTS),
        # the judges' weights, in the order of params.specs
        judges=[judge_path(arch) for arch in ARCHS],
    output:
        report(L("table", table="mask_following.csv"), category="Hardness", caption="../report/mask_following.rst"),
    log:
        LOG("mask_following.log"),
    benchmark:
        BENCH("mask_following.tsv")
    params:
        resolution=SETTINGS.model.resolution,
        seed=SETTINGS.seed,  # the shuffled masks' derangement
        # the arch of each judge, in order, and the size they predict at
        specs=arch_specs(ARCHS),
        size=SETTINGS.segment.size,
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV
    script:
        "../scripts/mask_following.py"


if INPAINT_VARIANTS:

    # Lesions in real frames, measured (hardgen.scoring.inpainting): per inpainting variant and placement, the frame
    # kept outside the region redrawn (PSNR), the seam, the lesion following its mask against the real images' gap
    # (the cue of rule mask_following) and the hardness (the score table's in-loss z). Reads only what the generated
    # manifests record (placement, frame, region) and the score tables.
    rule inpainting:
        input:
            manifest=L("manifest"),
            conditions=L("conditions"),
            # in the order of params.variants
            generated=expand_n(L("generated"), variant=INPAINT_VARIANTS),
            scores=expand_n(L("scores"), scored=INPAINT_VARIANTS),
        output:
            report(L("table", table="inpainting.csv"), category="Hardness", caption="../report/inpainting.rst"),
        log:
            LOG("inpainting.log"),
        benchmark:
            BENCH("inpainting.tsv")
        params:
            variants=INPAINT_VARIANTS,
            resolution=SETTINGS.model.resolution,
            seed=SETTINGS.seed,  # the shuffled masks' derangement
            loss_backbones=LOSS_BACKBONES,
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            ENV
        script:
            "../scripts/inpainting.py"


if SCARCITY:

    # The data-scarcity curve (data.train_subsets): every size's benchmark and runs in one table with n_real, and
    # each policy's mean score against the number of real training images (hardgen.report.scarcity). The other tables stay
    # per size, in results/n-{n_real}/tables/.
    rule scarcity:
        input:
            benchmarks=expand(L("table", table="benchmark.csv"), n_real=N_REALS),
            runs=expand(L("table", table="runs.csv"), n_real=N_REALS),
            records=expand(L("train_subset"), n_real=N_REALS),
            # every run's per-image scores: the bootstrap interval of a single-seed point
            images=scarcity_image_tables(),
        output:
            benchmark=report(
                L("scarcity_table", table="benchmark.csv"),
                category="Scarcity",
                caption="../report/scarcity_tables.rst",
            ),
            runs=report(
                L("scarcity_table", table="runs.csv"), category="Scarcity", caption="../report/scarcity_tables.rst"
            ),
            scarcity=report(
                L("scarcity_table", table="scarcity.csv"), category="Scarcity", caption="../report/scarcity.rst"
            ),
            plot=report(L("scarcity_plot"), category="Scarcity", caption="../report/scarcity.rst"),
        log:
            "logs/scarcity.log",
        benchmark:
            "results/benchmarks/scarcity.tsv"
        params:
            labels=N_REALS,  # data.train_subsets as written, in the order of the inputs
            image_runs=[(n, *run) for n in N_REALS for run in RUN_ORDER],  # the keys of input.images, in order
            # the curve's metric: report.primary_contrast's (the run's question), else mIoU
            metric=SETTINGS.report.primary_contrast.metric if SETTINGS.report.primary_contrast else "mIoU",
            testsets=TESTSETS,
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            ENV
        script:
            "../scripts/scarcity.py"
