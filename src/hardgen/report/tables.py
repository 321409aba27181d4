"""Readers and helpers the report's modules share (below all of them: they import it, it imports none of them): the
score and sample-loss readers, the registry's display order, rank correlations and figure saving."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import rankdata, spearmanr

from hardgen.core.io import (
    DataError,
    atomic_path,
    read_csv_table,
    require_columns,
    table_or_csv,
)
from hardgen.core.registry import POLICIES, VARIANTS

#: Display order of scored sets and of policies: the registry's (hardgen.core.registry), real first.
VARIANT_ORDER: tuple[str, ...] = ("real", *VARIANTS)
POLICY_ORDER: tuple[str, ...] = tuple(POLICIES)
SCORE_COLUMNS: tuple[str, ...] = ("sample_id", "variant", "backbone", "distance")
SAMPLE_LOSS_COLUMNS: tuple[str, ...] = ("sample_id", "loss", "fg_fraction")


def in_display_order(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """The distinct ``values``, those of ``preferred`` first in its order, then the others alphabetically."""
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def read_scores(score_csvs: Iterable[str | Path] | pd.DataFrame) -> pd.DataFrame:
    """The score tables in one (a table in memory as it is): :data:`SCORE_COLUMNS` at least, string sample ids and
    numeric distances (a non-number is NaN)."""
    if isinstance(score_csvs, pd.DataFrame):
        require_columns(score_csvs, SCORE_COLUMNS, "score table")
        return score_csvs
    frames = [read_csv_table(p, SCORE_COLUMNS, "score table") for p in score_csvs]
    if not frames:
        raise DataError("no score tables given")
    scores = pd.concat(frames, ignore_index=True)
    scores["sample_id"] = scores["sample_id"].astype(str)
    scores["distance"] = pd.to_numeric(scores["distance"], errors="coerce")
    return scores


def read_losses(name: str, path: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Segmenter ``name``'s per-sample losses (in memory or its CSV): ``sample_id`` (and ``variant`` when the table has
    it, generated variants share ids), ``loss``, ``fg_fraction``; one row per key."""
    path, losses = table_or_csv(path, f"sample loss ({name}) table", required_columns=SAMPLE_LOSS_COLUMNS)
    losses["sample_id"] = losses["sample_id"].astype(str)
    for column in ("loss", "fg_fraction"):
        losses[column] = pd.to_numeric(losses[column], errors="coerce")
    keys = ["sample_id", "variant"] if "variant" in losses.columns else ["sample_id"]
    duplicated = losses.duplicated(subset=keys)
    if duplicated.any():
        first = losses.loc[duplicated, keys].iloc[0].tolist()
        raise DataError(f"{path}: duplicate sample loss rows for {keys}={first}")
    return losses[[*keys, "loss", "fg_fraction"]]


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rho; NaN when fewer than 3 pairs or either side is constant (undefined)."""
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan")
    return float(spearmanr(x.to_numpy(), y.to_numpy()).statistic)


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman partial correlation of ``x`` and ``y`` controlling for ``z``.

    All three are rank-transformed (average ranks for ties), then the partial correlation of the
    ranks: ``(r_xy − r_xz r_yz) / sqrt((1 − r_xz²)(1 − r_yz²))`` with Pearson ``r`` of the ranks —
    the correlation of x and y that is left once what ``z`` explains of each is removed. NaN below 4
    samples, for a constant input, or when ``z`` determines ``x`` or ``y`` completely (|r| = 1).
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    if not (len(x) == len(y) == len(z)):
        raise ValueError(f"partial_spearman: lengths differ ({len(x)}, {len(y)}, {len(z)})")
    if len(x) < 4 or min(np.unique(v).size for v in (x, y, z)) < 2:
        return float("nan")
    r = np.corrcoef(np.vstack([rankdata(x), rankdata(y), rankdata(z)]))
    r_xy, r_xz, r_yz = r[0, 1], r[0, 2], r[1, 2]
    denominator = (1.0 - r_xz**2) * (1.0 - r_yz**2)
    if denominator <= 1e-12:
        return float("nan")
    return float(np.clip((r_xy - r_xz * r_yz) / np.sqrt(denominator), -1.0, 1.0))


def save_figure(figure: Figure, out_png: str | Path) -> None:
    """Render with Agg and write the PNG atomically."""
    FigureCanvasAgg(figure)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
