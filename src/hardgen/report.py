"""Tables and plots of a hardgen run: segmentation benchmark, hardness of generated sets, sample grids.

Everything here reads the CSV artifacts of earlier stages (see docs/architecture.md) and writes
tables under ``results/tables`` and PNGs under ``results/plots``, atomically. Plots use matplotlib's
object API (``Figure`` + Agg canvas) so no global pyplot state or display is involved.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from hardgen.io import DataError, atomic_path, read_gray, read_rgb, write_csv, write_text

log = logging.getLogger(__name__)

#: PraNet's five test sets, in the order the paper's tables use.
TESTSETS: tuple[str, ...] = ("CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir")

#: Metric names written by ``hardgen.metrics.evaluate_model``.
METRICS: tuple[str, ...] = ("mDice", "mIoU", "wFm", "Sm", "meanEm", "maxEm", "MAE")

#: Metrics shown in the markdown benchmark (the paper's headline metrics).
MARKDOWN_METRICS: tuple[str, ...] = ("mDice", "mIoU")

#: Variants of the hardness table, in display order (others follow alphabetically).
VARIANT_ORDER: tuple[str, ...] = ("real", "plain", "hard", "feedback")

#: Published mDice / mIoU of segmenters trained on real data only (Wan et al. 2026, Table; see
#: /work/shared/reference/paper-method.md). ``PUBLISHED[model][testset] = (mDice, mIoU)``.
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "PraNet": {
        "CVC-ClinicDB": (0.899, 0.849),
        "Kvasir": (0.898, 0.840),
        "CVC-ColonDB": (0.709, 0.640),
        "ETIS-LaribPolypDB": (0.628, 0.567),
        "CVC-300": (0.871, 0.797),
    },
    "SANet": {
        "CVC-ClinicDB": (0.916, 0.859),
        "Kvasir": (0.904, 0.847),
        "CVC-ColonDB": (0.752, 0.669),
        "ETIS-LaribPolypDB": (0.750, 0.654),
        "CVC-300": (0.888, 0.815),
    },
    "Polyp-PVT": {
        "CVC-ClinicDB": (0.937, 0.889),
        "Kvasir": (0.917, 0.864),
        "CVC-ColonDB": (0.808, 0.727),
        "ETIS-LaribPolypDB": (0.787, 0.706),
        "CVC-300": (0.900, 0.833),
    },
}

#: The paper's headline: mean mIoU over the five test sets (a fraction, like every table here).
PAPER_HEADLINE_MEAN_MIOU: float = 0.8684

BENCHMARK_COLUMNS: list[str] = ["arch", "policy", "seed", "testset", "metric", "value"]
EVAL_COLUMNS: tuple[str, ...] = ("testset", "image", "metric", "value")
SCORE_COLUMNS: tuple[str, ...] = ("sample_id", "variant", "backbone", "distance")

_EVAL_PATH = re.compile(r"(?:^|/)eval/(?P<arch>[^/]+)/(?P<policy>[^/]+)/seed-(?P<seed>-?\d+)\.csv$")

EvalKey = tuple[str, str, int]


# ----------------------------------------------------------------------------------------- reading
def _read_table(path: str | Path, required: Iterable[str], what: str) -> pd.DataFrame:
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


def parse_eval_path(path: str | Path) -> EvalKey:
    """``.../eval/<arch>/<policy>/seed-<s>.csv`` -> ``(arch, policy, s)``."""
    match = _EVAL_PATH.search(Path(path).as_posix())
    if match is None:
        raise DataError(f"{path}: evaluation path must look like .../eval/<arch>/<policy>/seed-<s>.csv")
    return match["arch"], match["policy"], int(match["seed"])


def _eval_mapping(eval_csvs: Mapping[EvalKey, str | Path] | Iterable[str | Path]) -> dict[EvalKey, Path]:
    if isinstance(eval_csvs, Mapping):
        return {(str(a), str(p), int(s)): Path(v) for (a, p, s), v in eval_csvs.items()}
    mapping: dict[EvalKey, Path] = {}
    for path in eval_csvs:
        key = parse_eval_path(path)
        if key in mapping:
            raise DataError(f"{path}: duplicate evaluation for {key} (also {mapping[key]})")
        mapping[key] = Path(path)
    return mapping


def benchmark_long(eval_csvs: Mapping[EvalKey, str | Path] | Iterable[str | Path]) -> pd.DataFrame:
    """Per-testset means of per-image evaluation rows, one row per (arch, policy, seed, testset, metric).

    ``eval_csvs`` maps ``(arch, policy, seed)`` to an evaluation CSV (columns ``testset, image,
    metric, value``), or is a list of paths laid out as ``results/eval/<arch>/<policy>/seed-<s>.csv``.
    Returns exactly the columns ``arch, policy, seed, testset, metric, value``.
    """
    frames = []
    for (arch, policy, seed), path in sorted(_eval_mapping(eval_csvs).items()):
        table = _read_table(path, EVAL_COLUMNS, "evaluation")
        if table.empty:
            raise DataError(f"{path}: evaluation table has no rows")
        values = pd.to_numeric(table["value"], errors="coerce")
        if values.isna().any():
            raise DataError(f"{path}: non-numeric entries in column 'value'")
        means = (
            table.assign(value=values).groupby(["testset", "metric"], sort=True)["value"].mean().reset_index()
        )
        frames.append(means.assign(arch=arch, policy=policy, seed=seed))
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=float if c == "value" else object) for c in BENCHMARK_COLUMNS})
    long = pd.concat(frames, ignore_index=True)[BENCHMARK_COLUMNS]
    return long.astype({"seed": int, "value": float})


# -------------------------------------------------------------------------------------- benchmark
def _ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in preferred if v in present] + sorted(v for v in present if v not in preferred)


def _mean_sd(values: pd.Series) -> str:
    """``mean ± sd`` (sample sd, ddof=1) over seeds; a single seed shows the mean alone."""
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def benchmark_summary(long_df: pd.DataFrame, metrics: Sequence[str] = MARKDOWN_METRICS) -> pd.DataFrame:
    """Per (arch, policy, seed, metric): each test set's value plus ``mean`` = the unweighted mean over test sets.

    The mean over test sets is taken per seed first (the paper averages the five test-set scores,
    not the images), so the spread across seeds is the spread of that mean.
    """
    subset = long_df[long_df["metric"].isin(metrics)]
    wide = subset.pivot_table(
        index=["arch", "policy", "seed", "metric"], columns="testset", values="value", aggfunc="mean"
    )
    testsets = _ordered(wide.columns, TESTSETS)
    wide = wide[testsets]
    wide["mean"] = wide.mean(axis=1, skipna=False)
    return wide.reset_index()


def benchmark_markdown(long_df: pd.DataFrame) -> str:
    """A markdown report: mDice and mIoU per test set and their mean, rows arch × policy, then the anchors.

    Cells are ``mean ± sd`` over seeds with the sample standard deviation (ddof=1); with a single
    seed the sd is undefined and the cell shows the mean alone. Values are fractions (0–1), like the
    published anchors that follow (PraNet, SANet, Polyp-PVT trained on real data; paper headline).
    """
    missing = [c for c in BENCHMARK_COLUMNS if c not in long_df.columns]
    if missing:
        raise DataError(f"benchmark table lacks columns {missing}")
    lines = ["# Segmentation benchmark", ""]
    summary = benchmark_summary(long_df)
    n_seeds = long_df.groupby(["arch", "policy"])["seed"].nunique()
    for metric in MARKDOWN_METRICS:
        rows = summary[summary["metric"] == metric]
        lines += [f"## {metric}", ""]
        if rows.empty:
            lines += [f"No {metric} rows in the evaluation tables.", ""]
            continue
        testsets = [c for c in rows.columns if c in set(long_df["testset"])]
        testsets = _ordered(testsets, TESTSETS)
        header = ["arch", "policy", "seeds", *testsets, "mean"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(testsets) + 1)) + "|")
        archs = _ordered(rows["arch"], [])
        for arch in archs:
            policies = _ordered(rows.loc[rows["arch"] == arch, "policy"], ("real", "plain", "hard", "feedback"))
            for policy in policies:
                cell_rows = rows[(rows["arch"] == arch) & (rows["policy"] == policy)]
                cells = [_mean_sd(cell_rows[t]) for t in [*testsets, "mean"]]
                lines.append(f"| {arch} | {policy} | {n_seeds[(arch, policy)]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Cells: mean ± sample sd (ddof=1) over seeds; a single seed shows the mean only. "
                 "`mean` = unweighted mean over test sets, computed per seed.")
    lines += ["", "## Published anchors (trained on real data only; mDice / mIoU)", ""]
    lines.append("| model | " + " | ".join(TESTSETS) + " | mean |")
    lines.append("|---|" + "|".join(["---:"] * (len(TESTSETS) + 1)) + "|")
    for model, scores in PUBLISHED.items():
        cells = [f"{scores[t][0]:.3f} / {scores[t][1]:.3f}" for t in TESTSETS]
        dice_mean = np.mean([scores[t][0] for t in TESTSETS])
        iou_mean = np.mean([scores[t][1] for t in TESTSETS])
        cells.append(f"{dice_mean:.3f} / {iou_mean:.3f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paper headline (Wan et al., Pattern Recognition 2026): {PAPER_HEADLINE_MEAN_MIOU * 100:.2f} % mean mIoU "
        "over the five test sets, 6.14 points above CTNet.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- hardness
def _read_scores(score_csvs: Iterable[str | Path] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(score_csvs, pd.DataFrame):
        frame = score_csvs
        missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"score table lacks columns {missing}")
        return frame
    frames = [_read_table(p, SCORE_COLUMNS, "score") for p in score_csvs]
    if not frames:
        raise DataError("no score tables given")
    scores = pd.concat(frames, ignore_index=True)
    scores["sample_id"] = scores["sample_id"].astype(str)
    scores["distance"] = pd.to_numeric(scores["distance"], errors="coerce")
    return scores


def hardness_table(score_csvs: Iterable[str | Path] | pd.DataFrame) -> pd.DataFrame:
    """Mean prototype discrepancy per (variant, backbone): columns ``variant, backbone, mean_discrepancy, n``.

    ``mean_discrepancy`` is the mean ``distance`` of the variant's samples to the real prototype
    under that backbone; ``n`` counts the samples with a finite distance.
    """
    scores = _read_scores(score_csvs)
    table = (
        scores.dropna(subset=["distance"])
        .groupby(["variant", "backbone"])["distance"]
        .agg(mean_discrepancy="mean", n="count")
        .reset_index()
    )
    order = {v: i for i, v in enumerate(_ordered(table["variant"], VARIANT_ORDER))}
    table = table.sort_values(["variant", "backbone"], key=lambda s: s.map(order) if s.name == "variant" else s)
    return table.reset_index(drop=True).astype({"n": int})


def _read_losses(name: str, path: str | Path) -> pd.DataFrame:
    losses = _read_table(path, ("sample_id", "loss"), f"sample loss ({name})")
    losses["sample_id"] = losses["sample_id"].astype(str)
    losses["loss"] = pd.to_numeric(losses["loss"], errors="coerce")
    keys = ["sample_id", "variant"] if "variant" in losses.columns else ["sample_id"]
    duplicated = losses.duplicated(subset=keys)
    if duplicated.any():
        first = losses.loc[duplicated, keys].iloc[0].tolist()
        raise DataError(f"{path}: duplicate sample loss rows for {keys}={first}")
    return losses[[*keys, "loss"]]


def _spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rho; NaN when fewer than 3 pairs or either side is constant (undefined)."""
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan")
    return float(spearmanr(x.to_numpy(), y.to_numpy()).statistic)


def hardness_transfer(
    score_csvs: Iterable[str | Path] | pd.DataFrame, sample_loss_csvs: Mapping[str, str | Path]
) -> pd.DataFrame:
    """Does feature-space hardness predict segmenter loss? Spearman per (backbone, segmenter, variant).

    For every variant in the scores, and for ``all`` (every generated sample pooled, i.e. every
    variant except ``real``), the per-sample discrepancy under each backbone is rank-correlated with
    the per-sample loss of each real-trained segmenter (``sample_loss_csvs[name]``: columns
    ``sample_id, loss`` and optionally ``variant``; with ``variant`` the join is on both, since
    generated variants share sample ids). Columns: ``backbone, segmenter, variant, spearman, n``
    (``n`` = joined samples; spearman is NaN below 3 samples or for constant inputs).
    """
    scores = _read_scores(score_csvs)
    rows = []
    for segmenter, path in sorted(sample_loss_csvs.items()):
        losses = _read_losses(segmenter, path)
        keys = [c for c in ("sample_id", "variant") if c in losses.columns]
        joined = scores.merge(losses, on=keys, how="inner").dropna(subset=["distance", "loss"])
        if joined.empty:
            log.warning("%s: no sample ids in common with the score tables", path)
        for backbone in sorted(scores["backbone"].unique()):
            per_backbone = joined[joined["backbone"] == backbone]
            groups = {v: per_backbone[per_backbone["variant"] == v] for v in _ordered(scores["variant"], VARIANT_ORDER)}
            groups["all"] = per_backbone[per_backbone["variant"] != "real"]
            for variant, group in groups.items():
                if group.empty and variant != "all":
                    continue  # e.g. real training images: the segmenters' losses cover generated samples only
                rows.append(
                    {
                        "backbone": backbone,
                        "segmenter": segmenter,
                        "variant": variant,
                        "spearman": _spearman(group["distance"], group["loss"]),
                        "n": len(group),
                    }
                )
    columns = ["backbone", "segmenter", "variant", "spearman", "n"]
    return pd.DataFrame(rows, columns=columns).astype({"spearman": float, "n": int})


# ------------------------------------------------------------------------------------------- plots
def _save_figure(figure: Figure, out_png: str | Path) -> None:
    """Render with Agg and write the PNG atomically."""
    FigureCanvasAgg(figure)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _as_table(source: pd.DataFrame | str | Path, required: Sequence[str], what: str) -> pd.DataFrame:
    table = source.copy() if isinstance(source, pd.DataFrame) else _read_table(source, required, what)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{what} table lacks columns {missing}")
    table["sample_id"] = table["sample_id"].astype(str)
    return table


def _has_path(value: object) -> bool:
    return isinstance(value, (str, Path)) and str(value) not in ("", "nan")


def plot_grid(
    real_pairs: pd.DataFrame | str | Path,
    generated_by_variant: Mapping[str, pd.DataFrame | str | Path],
    out_png: str | Path,
    n: int = 6,
) -> list[str]:
    """Side-by-side grid: one row per condition, columns condition | real | one per variant.

    ``real_pairs`` has ``sample_id`` (the condition's id, shared with the generated manifests),
    ``image`` (the real image; empty for synthetic layouts) and ``mask``, optionally ``condition``
    (shown instead of the mask). ``generated_by_variant`` maps a variant to its generation manifest
    (``sample_id, image``). Rows prefer sample ids generated by every variant and having a real
    image, so each row compares the same source mask. Returns the sample ids shown.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    real = _as_table(real_pairs, ("sample_id", "image", "mask"), "real pairs").drop_duplicates("sample_id")
    generated = {
        v: _as_table(t, ("sample_id", "image"), f"generated manifest ({v})")
        .drop_duplicates("sample_id")
        .set_index("sample_id")["image"]
        for v, t in generated_by_variant.items()
    }
    real = real.set_index("sample_id")

    def coverage(sid: str) -> tuple[int, int, str]:
        n_variants = sum(sid in g.index for g in generated.values())
        has_real = int(_has_path(real.at[sid, "image"])) if sid in real.index else 0
        return (-n_variants, -has_real, sid)

    candidates = set(real.index).union(*[set(g.index) for g in generated.values()])
    chosen = sorted(candidates, key=coverage)[:n]
    if not chosen:
        raise DataError(f"{out_png}: nothing to plot (no real pairs and no generated images)")
    columns = ["condition", "real", *generated]
    figure = Figure(figsize=(1.6 * len(columns), 1.6 * len(chosen)))
    axes = figure.subplots(len(chosen), len(columns), squeeze=False)
    for r, sid in enumerate(chosen):
        cells: list[tuple[str | None, bool]] = []
        if sid in real.index:
            cond = real.at[sid, "condition"] if "condition" in real.columns else None
            cells.append((cond if _has_path(cond) else real.at[sid, "mask"], True))
            cells.append((real.at[sid, "image"] if _has_path(real.at[sid, "image"]) else None, False))
        else:
            cells += [(None, True), (None, False)]
        cells += [(g.get(sid) if _has_path(g.get(sid)) else None, False) for g in generated.values()]
        for c, (path, gray) in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if path is None:
                ax.text(0.5, 0.5, "—", ha="center", va="center", transform=ax.transAxes)
            elif gray:
                ax.imshow(read_gray(path), cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(read_rgb(path))
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(sid, fontsize=6)
    _save_figure(figure, out_png)
    return chosen


def plot_histograms(score_df: pd.DataFrame, out_png: str | Path, bins: int = 30) -> None:
    """Discrepancy distributions: one panel per backbone, one density curve (step histogram) per variant."""
    missing = [c for c in ("variant", "backbone", "distance") if c not in score_df.columns]
    if missing:
        raise DataError(f"score table lacks columns {missing}")
    scores = score_df.dropna(subset=["distance"])
    backbones = sorted(scores["backbone"].unique())
    if not backbones:
        raise DataError(f"{out_png}: no finite distances to plot")
    figure = Figure(figsize=(4.5 * len(backbones), 3.2))
    axes = figure.subplots(1, len(backbones), squeeze=False)[0]
    for ax, backbone in zip(axes, backbones):
        per_backbone = scores[scores["backbone"] == backbone]
        # shared bin edges so the variants' curves are comparable within a panel
        edges = np.histogram_bin_edges(per_backbone["distance"].to_numpy(), bins=bins)
        for variant in _ordered(per_backbone["variant"], VARIANT_ORDER):
            values = per_backbone.loc[per_backbone["variant"] == variant, "distance"].to_numpy()
            ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.5, label=f"{variant} (n={len(values)})")
        ax.set_title(f"backbone: {backbone}")
        ax.set_xlabel("distance to real prototype")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    _save_figure(figure, out_png)


def plot_benchmark(long_df: pd.DataFrame, out_png: str | Path, metric: str = "mDice") -> None:
    """Grouped bars: mean over test sets of ``metric`` per policy, one group per arch; error bars = sd over seeds."""
    summary = benchmark_summary(long_df, metrics=[metric])
    if summary.empty:
        raise DataError(f"{out_png}: no {metric} rows to plot")
    stats = summary.groupby(["arch", "policy"])["mean"].agg(["mean", "std"]).fillna({"std": 0.0})
    archs = _ordered(summary["arch"], [])
    policies = _ordered(summary["policy"], ("real", "plain", "hard", "feedback"))
    width = 0.8 / len(policies)
    figure = Figure(figsize=(max(4.0, 1.2 * len(archs) * len(policies) * 0.6 + 2), 3.5))
    ax = figure.subplots()
    for i, policy in enumerate(policies):
        means = [stats["mean"].get((a, policy), np.nan) for a in archs]
        sds = [stats["std"].get((a, policy), 0.0) for a in archs]
        ax.bar(np.arange(len(archs)) + (i - (len(policies) - 1) / 2) * width, means, width, yerr=sds, label=policy)
    ax.set_xticks(np.arange(len(archs)), archs)
    ax.set_ylabel(f"{metric} (mean over test sets)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=min(len(policies), 3))
    _save_figure(figure, out_png)


# ------------------------------------------------------------------------------------- entry point
def real_pairs_from(conditions_csv: str | Path, data_manifest_csv: str | Path) -> pd.DataFrame:
    """Join the conditions table with the data manifest: ``sample_id, image, mask, condition``.

    ``image`` is the real training image of the condition's source mask (empty for layouts whose
    source is not in the manifest).
    """
    conditions = _read_table(conditions_csv, ("sample_id", "source_id", "condition", "mask"), "conditions")
    manifest = _read_table(data_manifest_csv, ("id", "image"), "data manifest")
    joined = conditions.astype({"source_id": str}).merge(
        manifest[["id", "image"]].astype({"id": str}).rename(columns={"id": "source_id"}), on="source_id", how="left"
    )
    return joined[["sample_id", "image", "mask", "condition"]].fillna({"image": ""})


def _pairs_from_generated(generated: Mapping[str, Path], data_manifest_csv: str | Path) -> pd.DataFrame:
    """Grid rows without the conditions table: condition and mask from the generated manifests; the
    real image only where a sample id is also a data-manifest id."""
    frames = [_read_table(p, ("sample_id", "mask", "condition"), f"generated manifest ({v})") for v, p in generated.items()]
    pairs = pd.concat(frames, ignore_index=True).astype({"sample_id": str}).drop_duplicates("sample_id")
    manifest = _read_table(data_manifest_csv, ("id", "image"), "data manifest").astype({"id": str})
    images = manifest.set_index("id")["image"]
    pairs["image"] = [images.get(sid, "") for sid in pairs["sample_id"]]
    return pairs[["sample_id", "image", "mask", "condition"]]


def _keyed_paths(paths: Mapping[str, str | Path] | Iterable[str | Path], pattern: str, what: str) -> dict[str, Path]:
    """A ``{name: path}`` mapping as given, or parsed from each path with ``pattern`` (one named group)."""
    if isinstance(paths, Mapping):
        return {str(k): Path(v) for k, v in paths.items()}
    mapping: dict[str, Path] = {}
    for path in paths:
        match = re.search(pattern, Path(path).as_posix())
        if match is None:
            raise DataError(f"{path}: cannot tell the {what} from this path (expected {pattern})")
        mapping[match.group(1)] = Path(path)
    return mapping


def write_report(
    eval_csvs: Mapping[EvalKey, str | Path] | Iterable[str | Path],
    score_csvs: Iterable[str | Path],
    generated_manifests: Mapping[str, str | Path] | Iterable[str | Path],
    data_manifest_csv: str | Path,
    tables_dir: str | Path,
    plots_dir: str | Path,
    *,
    sample_loss_csvs: Mapping[str, str | Path] | Iterable[str | Path] | None = None,
    conditions_csv: str | Path | None = None,
    grid_rows: int = 6,
) -> dict[str, Path]:
    """Write every table and plot of the run; returns ``{name: path}`` of what was written.

    Inputs: evaluation CSVs (mapping or ``.../eval/<arch>/<policy>/seed-<s>.csv`` paths), score CSVs,
    generation manifests (``{variant: path}`` or ``.../generated/<variant>/manifest.csv`` paths), the
    data manifest, optionally per-sample losses of the real-trained segmenters (``{name: path}`` or
    ``.../eval/<arch>/sample_loss.csv`` paths) and the conditions table (lets the grid show each
    condition's real image; without it only sample ids that are data-manifest ids get one).

    Tables (``tables_dir``): ``benchmark.csv`` (long: arch, policy, seed, testset, metric, value),
    ``benchmark.md``, ``hardness.csv`` (variant, backbone, mean_discrepancy, n),
    ``hardness_transfer.csv`` (backbone, segmenter, variant, spearman, n; header only without
    ``sample_loss_csvs``). Plots (``plots_dir``): ``grid.png``, ``histograms.png``, ``benchmark.png``.
    """
    tables_dir, plots_dir = Path(tables_dir), Path(plots_dir)
    written = {
        "benchmark_csv": tables_dir / "benchmark.csv",
        "benchmark_md": tables_dir / "benchmark.md",
        "hardness_csv": tables_dir / "hardness.csv",
        "hardness_transfer_csv": tables_dir / "hardness_transfer.csv",
        "grid_png": plots_dir / "grid.png",
        "histograms_png": plots_dir / "histograms.png",
        "benchmark_png": plots_dir / "benchmark.png",
    }
    generated = _keyed_paths(generated_manifests, r"generated/([^/]+)/manifest\.csv$", "variant")
    losses = _keyed_paths(sample_loss_csvs or {}, r"eval/([^/]+)/sample_loss\.csv$", "segmenter")
    long = benchmark_long(eval_csvs)
    write_csv(written["benchmark_csv"], long)
    write_text(written["benchmark_md"], benchmark_markdown(long))
    scores = _read_scores(list(score_csvs))
    write_csv(written["hardness_csv"], hardness_table(scores))
    write_csv(written["hardness_transfer_csv"], hardness_transfer(scores, losses))
    if conditions_csv is not None:
        pairs = real_pairs_from(conditions_csv, data_manifest_csv)
    else:
        pairs = _pairs_from_generated(generated, data_manifest_csv)
    plot_grid(pairs, generated, written["grid_png"], n=grid_rows)
    plot_histograms(scores, written["histograms_png"])
    plot_benchmark(long, written["benchmark_png"])
    log.info("report written: %s", ", ".join(str(p) for p in written.values()))
    return written
