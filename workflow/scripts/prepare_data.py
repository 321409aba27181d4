"""Snakemake wrapper for rule prepare_data: validate the dataset and write the manifest (and the training subset)."""

from hardgen.data import SUBSET_COLUMNS, build_manifest, train_subset, write_manifest
from hardgen.io import write_table
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    manifest = build_manifest(
        snakemake.params.root,
        snakemake.params.testsets,
        expected_sizes=snakemake.params.expected_sizes or None,
    )
    manifest, record = train_subset(manifest, snakemake.params.train_subset, snakemake.params.seed)
    write_table(snakemake.output.subset, record, SUBSET_COLUMNS, "training subset record")
    write_manifest(manifest, snakemake.output.manifest)
    log.info("manifest: %s", manifest.groupby("split").size().to_dict())
