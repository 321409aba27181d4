"""The LoRAs' validation in the report (hardgen.report.validation): the merged table, its curves and the first and
last grids of each stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import DataError, read_rgb, write_image
from hardgen.core.layout import VALIDATION_COLUMNS, validation_grid
from hardgen.report import validation


def _stage(root, stage: str, steps: list[int], metrics: dict[str, list[float]]):
    """A LoRA folder's validation.csv and its grids (one colour per step)."""
    folder = root / stage
    rows = [{"stage": stage, "step": step, "metric": name, "value": values[k]}
            for k, step in enumerate(steps) for name, values in metrics.items()]
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=list(VALIDATION_COLUMNS)).to_csv(folder / "validation.csv", index=False)
    for k, step in enumerate(steps):
        write_image(validation_grid(folder, step), np.full((16, 32, 3), 40 * k, np.uint8))
    return folder / "validation.csv"


def test_the_report_merges_every_stage_and_draws_its_curves_and_first_and_last_grids(tmp_path):
    csvs = {"hard": _stage(tmp_path, "hard", [0, 10, 20], {"mask_following_margin": [0.9, 0.8, 0.7],
                                                             "prototype_distance/cnn": [1.0, 1.2, 1.5]}),
            "plain": _stage(tmp_path, "plain", [0, 20, 40], {"mask_following_margin": [0.5, 0.6, 0.8]})}
    table = validation.merge_validation(csvs)
    assert list(table.columns) == ["stage", "step", "metric", "value"]
    assert list(dict.fromkeys(table["stage"])) == ["plain", "hard"] and len(table) == 9  # display order
    validation.plot_validation_curves(table, tmp_path / "curves.png")
    validation.plot_validation_grids(table, csvs, tmp_path / "grids.png")
    assert read_rgb(tmp_path / "curves.png").shape[1] > read_rgb(tmp_path / "grids.png").shape[1] / 2
    (tmp_path / "plain" / "validation" / "step-40.png").unlink()
    with pytest.raises(DataError, match="step-40.png: the plain LoRA's validation grid of step 40 is missing"):
        validation.plot_validation_grids(table, csvs, tmp_path / "grids.png")
    # validation off: an empty table, no plot
    (tmp_path / "off").mkdir()
    pd.DataFrame(columns=list(VALIDATION_COLUMNS)).to_csv(tmp_path / "off" / "validation.csv", index=False)
    empty = validation.merge_validation({"plain": tmp_path / "off" / "validation.csv"})
    assert empty.empty
    with pytest.raises(DataError, match="no validation rows"):
        validation.plot_validation_curves(empty, tmp_path / "none.png")
    with pytest.raises(DataError, match=r"validation table \(feedback\): rows of stage\(s\) \['hard'\]"):
        validation.merge_validation({"feedback": csvs["hard"]})
