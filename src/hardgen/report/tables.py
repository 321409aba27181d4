"""Readers and helpers the report, the transfer study and the gallery share (below all three: they import it, it
imports none of them): checked CSV readers, the registry's display order, rank correlations and figure saving."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import rankdata, spearmanr

from hardgen.core.io import DataError, atomic_path
from hardgen.core.registry import POLICIES, VARIANTS

#: Display order of scored sets and of policies: the registry's (hardgen.core.registry), real first.
VARIANT_ORDER: tuple[str, ...] = ("real", *VARIANTS)
POLICY_ORDER: tuple[str, ...] = tuple(POLICIES)
SCORE_COLUMNS: tuple[str, ...] = ("sample_id", "variant", "backbone", "distance")
SAMPLE_LOSS_COLUMNS: tuple[str, ...] = ("sample_id", "loss", "fg_fraction")


def read_table(path: str | Path, required: Iterable[str], what: str) -> pd.DataFrame:
    """Read a CSV and check its columns; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} table not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable {what} table ({err})") from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: {what} table lacks columns {missing} (has {list(frame.columns)})")
    return frame


def ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def read_scores(score_csvs: Iterable[str | Path] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(score_csvs, pd.DataFrame):
        frame = score_csvs
        missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"score table lacks columns {missing}")
        return frame
    frames = [read_table(p, SCORE_COLUMNS, "score") for p in score_csvs]
    if not frames:
        raise DataError("no score tables given")
    scores = pd.concat(frames, ignore_index=True)
    scores["sample_id"] = scores["sample_id"].astype(str)
    scores["distance"] = pd.to_numeric(scores["distance"], errors="coerce")
    return scores


def read_losses(name: str, path: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(path, pd.DataFrame):
        missing = [c for c in SAMPLE_LOSS_COLUMNS if c not in path.columns]
        if missing:
            raise DataError(f"sample loss ({name}) lacks columns {missing}")
        losses = path.copy()
        path = f"sample loss ({name})"
    else:
        losses = read_table(path, SAMPLE_LOSS_COLUMNS, f"sample loss ({name})")
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
