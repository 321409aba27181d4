"""Snakemake wrapper for rule subset_manifest: one size of the data-scarcity curve (data.train_subsets) as a manifest."""

from hardgen.core.io import write_table
from hardgen.core.logging_utils import stage_logging
from hardgen.data.manifest import (
    SUBSET_COLUMNS,
    load_manifest,
    train_subset,
    write_manifest,
)

with stage_logging(snakemake.log[0]) as log:
    # the same seeded ranking as data.train_subset, so the sizes are nested (the 100 inside the 400)
    manifest, record = train_subset(load_manifest(snakemake.input.manifest), snakemake.params.size,
                                    snakemake.params.seed, key="data.train_subsets")
    write_table(snakemake.output.subset, record, SUBSET_COLUMNS, "training subset record")
    write_manifest(manifest, snakemake.output.manifest)
    log.info("manifest: %s", manifest.groupby("split").size().to_dict())
