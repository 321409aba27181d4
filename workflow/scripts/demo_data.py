"""Snakemake wrapper for rule demo_data: the procedural PraNet-layout demo dataset."""

from hardgen.data import make_demo_dataset
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    make_demo_dataset(
        root=snakemake.output[0],
        testsets=snakemake.params.testsets,
        n_train=demo.get("n_train", 24),
        n_test=demo.get("n_test", 6),
        min_size=demo.get("min_size", 72),
        max_size=demo.get("max_size", 112),
        seed=snakemake.params.seed,
    )
    log.info("demo dataset written to %s", snakemake.output[0])
