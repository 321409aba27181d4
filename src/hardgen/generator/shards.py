"""The torch-free half of generation: which samples a shard makes, and merging the shards' manifests.

Kept apart from :mod:`hardgen.generator.generate` (which re-exports everything here) so that rule ``generated_manifest``
merges CSVs without importing torch or diffusers (seconds of start-up per job).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from hardgen.core.io import (
    DataError,
    read_csv_table,
    resolve_table_path,
    table_or_csv,
    write_csv,
)

CONDITION_COLUMNS: tuple[str, ...] = ("sample_id", "condition", "mask")
MANIFEST_COLUMNS: list[str] = ["sample_id", "image", "mask", "condition", "variant"]

#: Extra columns of a shard manifest: every sample's seed; ``mined`` adds the kept candidate and its score.
SEED_COLUMN = "seed"
MINING_COLUMNS: list[str] = ["candidate", "mining_score"]
#: ``inpaint`` / ``hard_inpaint`` add each sample's placement, the id of the frame drawn into, that frame and the region
#: redrawn (PNG paths; outside the region the image is the frame).
INPAINT_COLUMNS: list[str] = ["placement", "frame_id", "frame", "region"]


# --------------------------------------------------------------------------------- planning
def read_conditions(conditions: pd.DataFrame | str | Path) -> pd.DataFrame:
    """Load and check a conditions table (``sample_id, source_id, kind, condition, mask``).

    Sample ids must be unique and usable as file names; errors name the table. Relative paths in a
    CSV are resolved against the working directory, then against the CSV's folder (as in training).
    """
    name, table = table_or_csv(conditions, "conditions table", dtype={"sample_id": str, "source_id": str},
                               required_columns=CONDITION_COLUMNS)
    if not isinstance(conditions, pd.DataFrame):
        for column in ("condition", "mask"):
            table[column] = [str(resolve_table_path(v, name, column)) for v in table[column]]
    table["sample_id"] = table["sample_id"].astype(str)
    duplicated = table["sample_id"][table["sample_id"].duplicated()]
    if not duplicated.empty:
        raise DataError(f"{name}: duplicate sample_id {duplicated.iloc[0]!r}")
    bad = [s for s in table["sample_id"] if not s or "/" in s or "\\" in s or s.startswith(".")]
    if bad:
        raise DataError(f"{name}: sample_id {bad[0]!r} cannot be used as a file name")
    return table


def planned_samples(plan: pd.DataFrame | str | Path, conditions: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The plan's samples with their condition image and mask: ``sample_id, condition_id, condition, mask, seed``.

    Every plan row must name a condition of the table (DataError otherwise, naming the id).
    """
    from hardgen.scoring.allocation import read_plan

    samples = read_plan(plan)
    table = read_conditions(conditions).set_index("sample_id")
    unknown = sorted(set(samples["condition_id"]) - set(table.index))
    if unknown:
        raise DataError(f"generation plan: condition id(s) {unknown[:5]} are not in the conditions table")
    joined = samples.assign(condition=table.loc[samples["condition_id"], "condition"].to_numpy(),
                            mask=table.loc[samples["condition_id"], "mask"].to_numpy())
    return read_conditions(joined[["sample_id", "condition_id", "condition", "mask", SEED_COLUMN]])


def shard_chunks(sample_ids: Iterable[str], batch_size: int, shard_index: int, n_shards: int) -> list[list[str]]:
    """The chunks (batches) of sorted sample ids that shard ``shard_index`` of ``n_shards`` generates.

    Chunk ``c`` holds sorted ids ``[c*batch_size, (c+1)*batch_size)`` and belongs to shard ``c % n_shards``,
    so batch composition does not depend on the shard count.
    """
    if batch_size < 1:
        raise ValueError(f"generation.batch_size must be >= 1, got {batch_size}")
    if n_shards < 1:
        raise ValueError(f"generation.shards must be >= 1, got {n_shards}")
    if not 0 <= shard_index < n_shards:
        raise ValueError(f"shard index {shard_index} is outside [0, {n_shards})")
    ordered = sorted(sample_ids)
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return [chunk for c, chunk in enumerate(chunks) if c % n_shards == shard_index]


# ----------------------------------------------------------------------------------- merging
def merge_shards(
    shard_csvs: Sequence[str | Path],
    out_csv: str | Path,
    conditions: pd.DataFrame | str | Path | None = None,
    plan: pd.DataFrame | str | Path | None = None,
) -> pd.DataFrame:
    """Concatenate shard manifests into ``out_csv`` (atomically) after checking the ids.

    Raises :class:`DataError` for a sample id in two shards, an image or mask file that does not exist, or
    a planned sample id (``plan``'s, else ``conditions``') that no shard generated or a generated id that is
    not planned. Rows are sorted by sample id; columns are :data:`MANIFEST_COLUMNS` followed by the shards'
    extra columns (``seed``; ``candidate, mining_score`` for ``mined``; ``placement, frame_id, frame, region`` for the
    inpainting variants).
    """
    frames = []
    for path in shard_csvs:
        frame = read_csv_table(path, MANIFEST_COLUMNS, "shard manifest", dtype={"sample_id": str})
        frames.append(frame.assign(_shard=str(path)))
    if not frames:
        raise DataError(f"{out_csv}: no shard manifests to merge")
    merged = pd.concat(frames, ignore_index=True)
    duplicated = merged[merged["sample_id"].duplicated(keep=False)]
    if not duplicated.empty:
        sid = duplicated["sample_id"].iloc[0]
        shards = sorted(set(duplicated.loc[duplicated["sample_id"] == sid, "_shard"]))
        raise DataError(f"sample_id {sid!r} appears more than once, in {shards}")
    absent = [p for p in [*merged["image"], *merged["mask"]] if not Path(p).is_file()]
    if absent:
        raise DataError(f"{absent[0]}: listed in a shard manifest but missing ({len(absent)} missing files)")
    if plan is not None or conditions is not None:
        from hardgen.scoring.allocation import read_plan

        what = "planned" if plan is not None else "condition"
        expected = set(read_plan(plan)["sample_id"] if plan is not None else read_conditions(conditions)["sample_id"])
        got = set(merged["sample_id"])
        if expected - got:
            raise DataError(f"{len(expected - got)} {what} sample ids not generated, e.g. {min(expected - got)!r}")
        if got - expected:
            raise DataError(f"{len(got - expected)} generated sample ids are not {what} samples, "
                            f"e.g. {min(got - expected)!r}")
    extra = [c for c in merged.columns if c not in MANIFEST_COLUMNS and c != "_shard"]
    merged = merged.drop(columns="_shard").sort_values("sample_id").reset_index(drop=True)[MANIFEST_COLUMNS + extra]
    write_csv(out_csv, merged)
    return merged
