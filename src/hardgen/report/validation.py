"""The LoRAs' validation during training in the report: ``results/tables/validation.csv`` (every stage's
``validation.csv`` merged), ``validation_curves.png`` (each metric against the step, one line per stage) and
``validation_grids.png`` (each stage's first and last validation grid).

A LoRA's ``validation.csv`` (``stage, step, metric, value``: :data:`hardgen.core.layout.VALIDATION_COLUMNS`) is
written by its training job with the grids beside it (``validation/step-<N>.png``, named by the steps of its rows);
with ``train.validation_steps: 0`` it has no rows and the report draws neither plot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hardgen.core.io import DataError, read_rgb, table_or_csv
from hardgen.core.layout import VALIDATION_COLUMNS, validation_grid
from hardgen.report.plots import LORA_ORDER
from hardgen.report.tables import in_display_order, save_figure

#: what each metric is, for the plots' titles
TITLES = {
    "mask_following_margin": "mask-following margin (1 = as the real images, 0 = ignores the masks)",
    "judge_loss": "the feedback judge's loss on the samples",
}


def merge_validation(validation_csvs: Mapping[str, str | Path | pd.DataFrame]) -> pd.DataFrame:
    """Every stage's validation table (``{variant: validation.csv}``), stacked in display order; a table whose
    ``stage`` column names another variant than its key is a :class:`DataError`."""
    tables = []
    for variant in in_display_order(validation_csvs, LORA_ORDER):
        _, table = table_or_csv(validation_csvs[variant], f"validation table ({variant})",
                                required_columns=VALIDATION_COLUMNS)
        stages = set(table["stage"].astype(str))
        if stages - {variant}:
            raise DataError(f"validation table ({variant}): rows of stage(s) {sorted(stages - {variant})}")
        tables.append(table[list(VALIDATION_COLUMNS)])
    if not tables:
        return pd.DataFrame(columns=list(VALIDATION_COLUMNS))
    return pd.concat(tables, ignore_index=True).astype({"step": int, "value": float})


def _title(metric: str) -> str:
    if metric.startswith("prototype_distance/"):
        return f"distance to the {metric.split('/', 1)[1]} prototype (in-loss backbone)"
    return TITLES.get(metric, metric)


def plot_validation_curves(table: pd.DataFrame, out_png: str | Path) -> None:
    """One panel per metric: its value against the optimiser step, a line per stage (step 0: the LoRA it starts
    from, before any step of this stage)."""
    if table.empty:
        raise DataError(f"{out_png}: no validation rows (train.validation_steps: 0)")
    metrics = list(dict.fromkeys(table["metric"]))
    figure = Figure(figsize=(4.2 * len(metrics), 3.2))
    axes = np.atleast_1d(figure.subplots(1, len(metrics)))
    stages = in_display_order(table["stage"], LORA_ORDER)
    colours = {stage: f"C{i}" for i, stage in enumerate(stages)}
    for ax, metric in zip(axes, metrics, strict=True):
        for stage in stages:
            rows = table[(table["stage"] == stage) & (table["metric"] == metric)].sort_values("step")
            if not rows.empty:
                ax.plot(rows["step"], rows["value"], marker="o", color=colours[stage], label=stage)
        ax.set_title(_title(metric), fontsize=8)
        ax.set_xlabel("optimiser step of the stage")
        ax.legend(fontsize=7)
    save_figure(figure, out_png)


def plot_validation_grids(table: pd.DataFrame, validation_csvs: Mapping[str, str | Path], out_png: str | Path) -> None:
    """Per stage (a row), its first and last validation grid (conditions over samples), captioned with the step; a
    grid missing beside its ``validation.csv`` is a :class:`DataError` naming the file."""
    stages = [s for s in in_display_order(table["stage"], LORA_ORDER) if s in validation_csvs]
    if not stages:
        raise DataError(f"{out_png}: no validation rows (train.validation_steps: 0)")
    figure = Figure(figsize=(10, 1.9 * len(stages)))
    axes = np.asarray(figure.subplots(len(stages), 2, squeeze=False))
    figure.suptitle("validation grids: the validation masks' conditions (top) over the LoRA's samples (bottom), the "
                    "same noise at every step", fontsize=9)
    for row, stage in enumerate(stages):
        steps = sorted(set(table.loc[table["stage"] == stage, "step"].astype(int)))
        for col, (step, when) in enumerate(((steps[0], "first"), (steps[-1], "last"))):
            path = validation_grid(Path(validation_csvs[stage]).parent, step)
            if not path.is_file():
                raise DataError(f"{path}: the {stage} LoRA's validation grid of step {step} is missing")
            ax = axes[row, col]
            ax.imshow(read_rgb(path))
            ax.set_axis_off()
            start = " (the LoRA it starts from)" if step == 0 else ""
            ax.set_title(f"{stage}: {when} validation, step {step}{start}", fontsize=8)
    save_figure(figure, out_png)
