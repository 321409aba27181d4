"""Snakemake wrapper for rule demo_data: the procedural demo dataset of data.demo.modality (polyp: PraNet layout;
ultrasound: folders layout; both with their table), with data.demo.lesion_colour and data.demo.empty_test_fraction."""

from hardgen.core.logging_utils import stage_logging
from hardgen.data.demo import make_demo_dataset, make_ultrasound_demo

with stage_logging(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    if demo["modality"] == "ultrasound":
        splits = {name: demo["n_train"] for name in snakemake.params.train_splits}
        splits.update({name: demo["n_test"] for name in snakemake.params.testsets})
        make_ultrasound_demo(
            snakemake.output[0],
            splits,
            demo["min_size"],
            demo["max_size"],
            snakemake.params.seed,
            lesion_colour=demo["lesion_colour"],
            empty_fraction={name: demo["empty_test_fraction"] for name in snakemake.params.testsets},
        )
    else:
        make_demo_dataset(
            root=snakemake.output[0],
            testsets=snakemake.params.testsets,
            n_train=demo["n_train"],
            n_test=demo["n_test"],
            min_size=demo["min_size"],
            max_size=demo["max_size"],
            seed=snakemake.params.seed,
            lesion_colour=demo["lesion_colour"],
            empty_test_fraction=demo["empty_test_fraction"],
        )
    log.info("demo dataset (%s) written to %s", demo["modality"], snakemake.output[0])
