"""Snakemake wrapper for rule demo_data: the procedural PraNet-layout demo dataset."""

from hardgen.data import make_demo_dataset
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    make_demo_dataset(
        root=snakemake.output[0],
        testsets=snakemake.params.testsets,
        n_train=demo["n_train"],
        n_test=demo["n_test"],
        min_size=demo["min_size"],
        max_size=demo["max_size"],
        seed=snakemake.params.seed,
    )
    log.info("demo dataset written to %s", snakemake.output[0])
