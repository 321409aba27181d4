"""Snakemake wrapper for rule inpainting: results/tables/inpainting.csv, the inpainting variants' samples measured per
placement (hardgen.scoring.inpainting); an undefined measure is an empty value, its reason logged."""

from hardgen.core.logging_utils import stage_logging

with stage_logging(snakemake.log[0]) as log:
    from hardgen.core.io import path_list, write_table
    from hardgen.scoring.inpainting import COLUMNS, inpainting_from_files

    inp, p = snakemake.input, snakemake.params
    table, notes = inpainting_from_files(
        inp.conditions,
        inp.manifest,
        dict(zip(p.variants, path_list(inp.generated), strict=True)),
        dict(zip(p.variants, path_list(inp.scores), strict=True)),
        p.loss_backbones,
        size=p.resolution,
        seed=p.seed,
    )
    write_table(snakemake.output[0], table, COLUMNS, "inpainting table")
    log.info("inpainting:\n%s", table.round(4).to_string(index=False))
    log.info("%d undefined measure(s)%s", len(notes), "".join(f"\n  {note}" for note in notes))
