"""Snakemake wrapper for rule prepare_data: validate the dataset and write the manifest."""

from hardgen.data import build_manifest, write_manifest
from hardgen.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    manifest = build_manifest(
        snakemake.params.root,
        snakemake.params.testsets,
        expected_sizes=snakemake.params.expected_sizes or None,
    )
    write_manifest(manifest, snakemake.output[0])
    log.info("manifest: %s", manifest.groupby("split").size().to_dict())
