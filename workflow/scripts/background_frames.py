"""Snakemake wrapper for rule background_frames: the demo's lesion-free frames (hardgen.data.demo.make_background_frames),
what the inpainting placement frames draws into when data.background_frames is null."""

from hardgen.core.logging_utils import stage_logging
from hardgen.data.demo import make_background_frames

with stage_logging(snakemake.log[0]) as log:
    demo = snakemake.params.demo
    files = make_background_frames(snakemake.output[0], demo["n_train"], demo["min_size"], demo["max_size"],
                                   snakemake.params.seed, modality=demo["modality"],
                                   lesion_colour=demo["lesion_colour"])
    log.info("%d lesion-free %s frames in %s", len(files), demo["modality"], snakemake.output[0])
