# hardgen: hard synthetic training images for polyp segmentation, and a benchmark of whether they help.
#
# dataset prep -> mask-to-canny conditioning -> Control-LoRA training (plain, hard, feedback) -> sharded
# generation -> prototype-discrepancy scoring -> filtering -> segmenter training -> evaluation -> report.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# With `--sdm apptainer`, every job runs in this image (config key `container`: built from the Dockerfile, same
# pins as requirements.lock); null (the default) = no container.
container: config.get("container")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/conditions.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
