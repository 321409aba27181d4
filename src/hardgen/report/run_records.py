"""The benchmark's segmenter runs, from their ``run.json`` records: ``runs.csv`` (each run's data and budget) and
``infeasible.csv`` (the subsets that could not be filled, whose runs were skipped)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from hardgen.core.io import DataError, read_json_record
from hardgen.report.tables import POLICY_ORDER, in_display_order

RUNS_COLUMNS: list[str] = ["arch", "policy", "ratio", "seed", "real_images", "synthetic_images", "iterations",
                           "images_seen"]
#: The training recipe of each run (segment.RECIPE_FIELDS), appended to runs.csv when the records carry it.
RUNS_RECIPE_COLUMNS: list[str] = ["optimizer", "learning_rate", "weight_decay", "lr_decay_at", "lr_decay_factor",
                                  "multi_scale", "grad_clip", "augment"]
INFEASIBLE_COLUMNS: list[str] = ["policy", "ratio", "seed", "pool", "need", "archs", "reason"]


def read_run_records(run_records: Iterable[str | Path | Mapping[str, object]]) -> list[dict]:
    """``run.json`` records (paths or dicts) as dicts, each with ``_source`` (where it came from)."""
    records = []
    for record in run_records:
        where = "run record"
        if not isinstance(record, Mapping):
            where = str(record)
            record = read_json_record(record, (), "run record")  # runs_table names the fields it lacks
        records.append({"_source": where, **record})
    return records


def infeasible_table(run_records: Iterable[str | Path | Mapping[str, object]]) -> pd.DataFrame:
    """The subsets that could not be filled (``filter.on_short_pool: skip``): one row per (policy, ratio, seed)
    with the pool size, the need, the archs whose runs were skipped and why (from the skipped runs' records)."""
    rows: dict[tuple, dict] = {}
    for record in read_run_records(run_records):
        if not record.get("skipped"):
            continue
        key = (str(record["policy"]), float(record["ratio"]), int(record["seed"]))
        row = rows.setdefault(key, {"policy": key[0], "ratio": key[1], "seed": key[2], "pool": record.get("pool"),
                                    "need": record.get("need"), "archs": [], "reason": record.get("reason")})
        row["archs"].append(str(record["arch"]))
    table = pd.DataFrame([{**r, "archs": " ".join(sorted(r["archs"]))} for r in rows.values()],
                         columns=INFEASIBLE_COLUMNS)
    order = {p: i for i, p in enumerate(in_display_order(table["policy"], POLICY_ORDER))}
    return table.sort_values(["policy", "ratio", "seed"], key=lambda c: c.map(order) if c.name == "policy" else c
                             ).reset_index(drop=True)



def runs_table(run_records: Iterable[str | Path | Mapping[str, object]]) -> pd.DataFrame:
    """One row per segmenter run: ``arch, policy, ratio, seed, real_images, synthetic_images, iterations,
    images_seen``, then the run's recipe (:data:`RUNS_RECIPE_COLUMNS`: optimizer, learning rate, weight decay, lr
    decay, multi-scale, clip, augmentation) when the records carry it (per-arch recipes: archs may differ). Runs
    skipped for an infeasible subset are left out (:func:`infeasible_table` lists them).

    ``run_records``: ``run.json`` paths (written beside each benchmark model by the train_segmenter
    rule) or their dicts. Raises :class:`DataError` (naming the file) on a missing field (a null ratio
    included) or a duplicate run, and when runs of one (arch, seed) differ in iterations or images seen:
    the benchmark compares policies (and ratios) at an equal budget only.
    """
    rows, sources = [], []
    for record in read_run_records(run_records):
        if record.get("skipped"):  # an infeasible subset's run (infeasible_table lists it)
            continue
        where = record["_source"]
        missing = [c for c in RUNS_COLUMNS if record.get(c) is None]
        if missing:
            raise DataError(f"{where}: run record lacks {missing}")
        row = {c: record[c] for c in RUNS_COLUMNS}
        for c in RUNS_RECIPE_COLUMNS:  # the run's recipe (per arch); multi_scale as "0.75/1/1.25"
            if c in record:
                value = record[c]
                row[c] = "/".join(f"{float(v):g}" for v in value) if isinstance(value, list) else value
        rows.append(row)
        sources.append(where)
    recipe_columns = [c for c in RUNS_RECIPE_COLUMNS if any(c in row for row in rows)]
    table = pd.DataFrame(rows, columns=RUNS_COLUMNS + recipe_columns)
    counts = {c: int for c in RUNS_COLUMNS[3:]}
    if table.empty:
        return table.astype({"ratio": float, **counts})
    try:
        table = table.astype({"arch": str, "policy": str, "ratio": float, **counts})
    except (TypeError, ValueError) as err:
        raise DataError(f"run records: non-integer counts or a non-numeric ratio ({err})") from err
    table["_source"] = sources
    duplicated = table.duplicated(["arch", "policy", "ratio", "seed"], keep=False)
    if duplicated.any():
        raise DataError(f"run records: duplicate runs in {table.loc[duplicated, '_source'].tolist()}")
    for (arch, seed), group in table.groupby(["arch", "seed"]):
        if group["iterations"].nunique() > 1 or group["images_seen"].nunique() > 1:
            budgets = group[["policy", "iterations", "images_seen", "_source"]].to_dict("records")
            raise DataError(f"run records: unequal training budgets for arch {arch!r}, seed {seed}: {budgets}")
    order = {p: i for i, p in enumerate(in_display_order(table["policy"], POLICY_ORDER))}
    table = table.sort_values(["arch", "seed", "policy", "ratio"],
                              key=lambda c: c.map(order) if c.name == "policy" else c)
    return table[RUNS_COLUMNS + recipe_columns].reset_index(drop=True)
