# Dataset: the procedural demo set (only when data.root is unset) and the validated manifest (any data.layout).


rule demo_data:
    output:
        directory(L("demo_data")),
    log:
        "logs/demo_data.log",
    benchmark:
        "results/benchmarks/demo_data.tsv"
    params:
        testsets=TESTSETS,
        train_splits=SETTINGS.data.train_splits,
        demo=SETTINGS.data.value("demo"),
        seed=SETTINGS.seed,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../scripts/demo_data.py"


if BACKGROUNDS_NEEDED and DEMO and not SETTINGS.data.background_frames:

    # The demo's lesion-free frames for the inpainting placement frames (data.background_frames null): the demo's
    # renderer without its lesion, data.demo.n_train frames on a seed stream of their own (hardgen.data.demo)
    rule background_frames:
        output:
            directory(L("background_frames")),
        log:
            "logs/background_frames.log",
        benchmark:
            "results/benchmarks/background_frames.tsv"
        params:
            demo=SETTINGS.data.demo.values(["modality", "n_train", "min_size", "max_size", "lesion_colour"]),
            seed=SETTINGS.seed,
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        conda:
            ENV
        script:
            "../scripts/background_frames.py"


rule prepare_data:
    input:
        demo_data_input,
    output:
        manifest=L("data_manifest"),
        # which real training images data.train_subset keeps (all when null), with their seeded rank
        subset=L("data_train_subset"),
        # 8-bit PNG pairs of what downstream should not read as stored (16-bit images, non-0/255 masks, NIfTI slices)
        converted=directory(L("converted")),
    log:
        "logs/prepare_data.log",
    benchmark:
        "results/benchmarks/prepare_data.tsv"
    params:
        root=DATA_SOURCE,
        layout=LAYOUT,
        train_splits=SETTINGS.data.train_splits,
        testsets=TESTSETS,
        expected_sizes=SETTINGS.data.expected_sizes,
        foreground=SETTINGS.data.foreground,
        window=SETTINGS.data.window,
        volume=SETTINGS.data.value("volume"),
        # the one size of data.train_subset (or a one-entry data.train_subsets); the scarcity curve keeps every image
        # here and rule subset_manifest draws each size
        train_subset=None if SCARCITY else hgconfig.train_subset_size(N_REALS[0]),
        # at most this many pairs per test set (hardgen rehearse; null = all), after every pair is validated
        test_subset=SETTINGS.data.test_subset,
        seed=SETTINGS.seed,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    script:
        "../scripts/prepare_data.py"


if SCARCITY:

    # The data-scarcity curve (data.train_subsets): one manifest per size, drawn from the full one with the seeded
    # nested ranking of data.train_subset; everything downstream reads its size's manifest (results/n-{n_real}/).
    rule subset_manifest:
        input:
            manifest=L("data_manifest"),
        output:
            manifest=L("manifest"),
            subset=L("train_subset"),
        log:
            LOG("subset_manifest.log"),
        benchmark:
            BENCH("subset_manifest.tsv")
        params:
            size=lambda wildcards: hgconfig.train_subset_size(wildcards.n_real),
            seed=SETTINGS.seed,
        threads: 1
        resources:
            mem_mb=1000,
            runtime=10,
        conda:
            ENV
        script:
            "../scripts/subset_manifest.py"


if FULL_BASELINE and not SCARCITY:

    # segment.full_data_baseline: the manifest of every validated training image beside data.train_subset's (the same
    # validation and test sets, prepare_data's script without the subset), read by the full-data baseline runs alone
    rule full_data_manifest:
        input:
            demo_data_input,
        output:
            manifest=L("full_manifest"),
            subset=L("full_train_subset"),
            converted=directory(L("full_converted")),
        log:
            "logs/full_data_manifest.log",
        benchmark:
            "results/benchmarks/full_data_manifest.tsv"
        params:
            root=DATA_SOURCE,
            layout=LAYOUT,
            train_splits=SETTINGS.data.train_splits,
            testsets=TESTSETS,
            expected_sizes=SETTINGS.data.expected_sizes,
            foreground=SETTINGS.data.foreground,
            window=SETTINGS.data.window,
            volume=SETTINGS.data.value("volume"),
            train_subset=None,  # every training image
            test_subset=SETTINGS.data.test_subset,
            seed=SETTINGS.seed,
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            ENV
        script:
            "../scripts/prepare_data.py"
