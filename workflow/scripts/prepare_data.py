"""Snakemake wrapper for rule prepare_data: validate the dataset (any data.layout) and write the manifest (and the
training subset; data.test_subset caps each test set); pairs that need it (16-bit images, non-0/255 masks, NIfTI
slices) are written as 8-bit PNGs under the converted folder."""

import shutil
from pathlib import Path

from hardgen.core.io import write_table
from hardgen.core.logging_utils import stage_logging
from hardgen.data.manifest import (
    SUBSET_COLUMNS,
    build_manifest,
    cap_test_sets,
    train_subset,
    write_manifest,
)
from hardgen.data.volumes import VolumeSlicing

with stage_logging(snakemake.log[0]) as log:
    params = snakemake.params
    volume = params.volume
    converted = Path(snakemake.output.converted)
    if converted.exists():
        shutil.rmtree(converted)  # no stale pair of an earlier dataset survives
    converted.mkdir(parents=True)
    manifest = build_manifest(
        params.root,
        params.testsets,
        expected_sizes=params.expected_sizes or None,
        layout=params.layout,
        train_splits=params.train_splits,
        foreground=params.foreground,
        window=params.window,
        volume=VolumeSlicing(axis=volume["axis"], keep_empty=volume["keep_empty"]),
        converted=converted,
        seed=params.seed,
    )
    manifest, record = train_subset(manifest, params.train_subset, params.seed)
    manifest = cap_test_sets(manifest, params.test_subset, params.seed)  # data.test_subset (hardgen rehearse)
    write_table(snakemake.output.subset, record, SUBSET_COLUMNS, "training subset record")
    write_manifest(manifest, snakemake.output.manifest)
    log.info("manifest: %s", manifest.groupby("split").size().to_dict())
