"""Snakemake wrapper for rule scarcity: the data-scarcity curve over every size of data.train_subsets."""

from hardgen.core.logging_utils import stage_logging
from hardgen.report.scarcity import write_scarcity

with stage_logging(snakemake.log[0]) as log:
    labels = list(snakemake.params.labels)  # each input list is in this order (common.smk's N_REALS)
    inp = snakemake.input
    tables = write_scarcity(
        benchmarks=dict(zip(labels, inp.benchmarks, strict=True)),
        runs=dict(zip(labels, inp.runs, strict=True)),
        records=dict(zip(labels, inp.records, strict=True)),
        out=snakemake.output,
        metric=snakemake.params.metric,
        testsets=list(snakemake.params.testsets),
        # per-image tables keyed (size label, arch, policy, ratio, seed), in the order the rule lists them
        images={(n, a, p, float(r), int(s)): path
                for (n, a, p, r, s), path in zip(snakemake.params.image_runs, inp.images, strict=True)},
    )
    log.info("scarcity curve: %d rows over n_real %s", len(tables["scarcity"]),
             sorted(tables["scarcity"]["n_real"].unique().tolist()))
