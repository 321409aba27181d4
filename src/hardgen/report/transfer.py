"""The transfer study: does the hardness one judge assigns a generated sample predict the hardness others see?

Every *source* of hardness ranks the generated samples: each backbone's prototype discrepancy (z), the ``fused``
score the hard generator was trained on (mean z over ``hard.loss_backbones``) and the ``feedback_judge`` (the loss of
the real-only segmenter the feedback generator was tuned against: model-specific hardness). Every *evaluator* ranks
them too: each backbone's z (in the loss or held out) and each segmenter family's real-trained benchmark models (their
loss, averaged over seeds per sample; never the judge, which is a separate run). One row per (source, evaluator):
Spearman's rho over the generated samples of every variant pooled, and the partial rho controlling for the mask's
foreground fraction (small polyps are both far from the prototype and hard to segment). The matrix shows at a glance
whether prototype hardness, measured where the generator was trained (in loss) or not (held out), carries over to
segmenters as well as (or better than) the model-specific feedback judge's.

Samples are pooled over variants: within one variant a few hundred samples span little of the hardness range, and the
question is whether the judges agree on *which* samples are hard, whichever generator made them. ``hardness_transfer``
in :mod:`hardgen.report.hardness` keeps the per-variant view (backbone × segmenter seed × variant).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hardgen.core.io import DataError, require_columns
from hardgen.report.tables import (
    partial_spearman,
    read_losses,
    read_scores,
    save_figure,
    spearman,
)

log = logging.getLogger(__name__)

#: The issue's columns, then the kind of each source.
TRANSFER_MATRIX_COLUMNS: list[str] = [
    "source", "evaluator", "evaluator_kind", "spearman", "partial_spearman", "n", "source_kind",
]
#: Source names besides the backbone keys.
FUSED = "fused"
FEEDBACK_JUDGE = "feedback_judge"
#: Prefix of a segmenter family's evaluator name (``seg:<arch>``; backbone and arch keys may coincide).
SEGMENTER_PREFIX = "seg:"
#: Kinds, in display order.
SOURCE_KINDS: tuple[str, ...] = ("prototype_in_loss", "prototype_heldout", "prototype_fused", "feedback")
EVALUATOR_KINDS: tuple[str, ...] = ("backbone_in_loss", "backbone_heldout", "segmenter")

_KEYS = ["variant", "sample_id"]


def _z_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Generated samples' z per backbone: index (variant, sample_id), one column per backbone."""
    if "z" not in scores.columns:
        raise DataError(f"score tables lack column 'z' (have {list(scores.columns)})")
    generated = scores[scores["variant"].astype(str) != "real"].copy()
    if generated.empty:
        raise DataError("score tables: no generated samples (only variant 'real')")
    generated["z"] = pd.to_numeric(generated["z"], errors="coerce")
    generated = generated.astype({"variant": str, "sample_id": str, "backbone": str})
    duplicated = generated.duplicated([*_KEYS, "backbone"])
    if duplicated.any():
        first = generated.loc[duplicated, [*_KEYS, "backbone"]].iloc[0].tolist()
        raise DataError(f"score tables: a sample is scored twice by one backbone ({first})")
    return generated.pivot(index=_KEYS, columns="backbone", values="z")


def _loss_table(name: str, source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A per-sample loss table indexed by (variant, sample_id): columns loss, fg_fraction."""
    if isinstance(source, pd.DataFrame):
        require_columns(source, ("sample_id", "variant", "loss", "fg_fraction"), f"sample loss ({name})")
        table = source.astype({"sample_id": str})
    else:
        table = read_losses(name, source)
        if "variant" not in table.columns:  # then read_losses keys on sample_id and has refused any shared id
            raise DataError(f"{source}: sample loss table lacks column 'variant' (generated variants share ids)")
    table = table.astype({"variant": str})
    if table.duplicated(_KEYS).any():
        raise DataError(f"sample loss ({name}): duplicate (variant, sample_id) rows")
    return table.set_index(_KEYS)[["loss", "fg_fraction"]]


def _arch_of(key: str) -> str:
    match = re.fullmatch(r"(.+)/seed-\d+", key)
    if match is None:
        raise DataError(f"sample loss {key!r}: expected a '<arch>/seed-<s>' key")
    return match.group(1)


def transfer_matrix(
    score_csvs: Sequence[str | Path] | pd.DataFrame,
    loss_backbones: Sequence[str],
    segmenter_losses: Mapping[str, str | Path | pd.DataFrame],
    judge_losses: str | Path | pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The transfer matrix: one row per (source, evaluator) over the generated samples of every variant pooled.

    ``score_csvs``: the score tables (``sample_id, variant, backbone, distance, z``; variant ``real`` is left out).
    ``loss_backbones``: ``hard.loss_backbones`` (the fused score, and in-loss vs held-out kinds).
    ``segmenter_losses``: ``{"<arch>/seed-<s>": table}`` of the real-trained benchmark segmenters (columns
    ``sample_id, variant, loss, fg_fraction``; ``results/eval/<arch>/seed-<s>/sample_loss.csv``), averaged over
    seeds per sample and arch (a sample missing for one seed is left out of that arch's column).
    ``judge_losses``: the feedback judge's table (``results/judge/<arch>/seed-<s>/sample_loss.csv``), or None.

    Columns :data:`TRANSFER_MATRIX_COLUMNS`: ``spearman`` (rho), ``partial_spearman`` (controlling for the mask's
    foreground fraction, from the loss tables; NaN without any), ``n`` (samples with both scores, and a foreground
    fraction when there is one). A backbone against itself is kept (rho 1 by construction; the heatmap marks it).
    """
    scores = read_scores(score_csvs)
    z = _z_table(scores)
    backbones = [str(b) for b in z.columns]
    unknown = sorted(set(map(str, loss_backbones)) - set(backbones))
    if unknown or not loss_backbones:
        raise ValueError(f"hard.loss_backbones: {unknown or '[]'} must name scored backbones {sorted(backbones)}")
    reserved = [b for b in backbones if b in (FUSED, FEEDBACK_JUDGE) or b.startswith(SEGMENTER_PREFIX)]
    if reserved:
        raise ValueError(f"backbones {reserved}: names reserved for the transfer matrix's sources and evaluators")
    in_loss = list(dict.fromkeys(map(str, loss_backbones)))
    heldout = sorted(b for b in backbones if b not in in_loss)

    columns: dict[str, pd.Series] = {b: z[b] for b in backbones}
    columns[FUSED] = z[in_loss].mean(axis=1, skipna=False)
    fg_parts: list[pd.Series] = []
    if judge_losses is not None:
        judge = _loss_table(FEEDBACK_JUDGE, judge_losses)
        columns[FEEDBACK_JUDGE] = judge["loss"]
        fg_parts.append(judge["fg_fraction"])
    by_arch: dict[str, list[pd.DataFrame]] = {}
    for key, source in sorted(segmenter_losses.items()):
        by_arch.setdefault(_arch_of(key), []).append(_loss_table(key, source))
    for arch, tables in by_arch.items():
        columns[SEGMENTER_PREFIX + arch] = pd.concat([t["loss"] for t in tables], axis=1).mean(axis=1, skipna=False)
        fg_parts += [t["fg_fraction"] for t in tables]
    wide = pd.DataFrame(columns)
    if fg_parts:
        fg = pd.concat(fg_parts, axis=1)
        spread = (fg.max(axis=1) - fg.min(axis=1)).max()
        if spread > 1e-9:
            raise DataError(f"sample loss tables disagree on a sample's foreground fraction (by {spread:.3g})")
        wide["fg_fraction"] = fg.mean(axis=1)
    else:
        log.warning("no sample loss tables: the transfer matrix has no foreground fraction, partial_spearman is NaN")
        wide["fg_fraction"] = np.nan

    sources = [(b, "prototype_in_loss") for b in in_loss] + [(b, "prototype_heldout") for b in heldout]
    sources.append((FUSED, "prototype_fused"))
    if FEEDBACK_JUDGE in wide.columns:
        sources.append((FEEDBACK_JUDGE, "feedback"))
    evaluators = [(b, "backbone_in_loss") for b in in_loss] + [(b, "backbone_heldout") for b in heldout]
    evaluators += [(SEGMENTER_PREFIX + arch, "segmenter") for arch in sorted(by_arch)]
    has_fg = bool(wide["fg_fraction"].notna().any())
    rows = []
    for source, source_kind in sources:
        for evaluator, evaluator_kind in evaluators:
            needed = [source, evaluator] + (["fg_fraction"] if has_fg else [])
            pair = wide[list(dict.fromkeys(needed))].dropna()
            x, y = pair[source], pair[evaluator]
            rows.append({
                "source": source, "evaluator": evaluator, "evaluator_kind": evaluator_kind,
                "spearman": spearman(x, y),
                "partial_spearman": partial_spearman(x, y, pair["fg_fraction"]) if has_fg else float("nan"),
                "n": len(pair), "source_kind": source_kind,
            })
    table = pd.DataFrame(rows, columns=TRANSFER_MATRIX_COLUMNS)
    return table.astype({"spearman": float, "partial_spearman": float, "n": int})


# ------------------------------------------------------------------------------------------------ heatmap
_SOURCE_LABELS = {"prototype_in_loss": "prototype, in loss", "prototype_heldout": "prototype, held out",
                  "prototype_fused": "prototype, in-loss mean", "feedback": "model-specific"}
_EVALUATOR_LABELS = {"backbone_in_loss": "backbone, in loss", "backbone_heldout": "backbone, held out",
                     "segmenter": "segmenters"}


def _boundaries(kinds: Sequence[str]) -> list[int]:
    """Positions between consecutive items of different kinds (where a separator line goes)."""
    return [i for i in range(1, len(kinds)) if kinds[i] != kinds[i - 1]]


def plot_transfer_matrix(table: pd.DataFrame, out_png: str | Path) -> None:
    """Heatmaps of :func:`transfer_matrix`: Spearman (left), partial Spearman (right); rows sources, columns evaluators.

    Rows are grouped prototype in-loss | held-out | fused | feedback judge, columns backbone in-loss | held-out |
    segmenters, with lines between the groups and the group in each label; every cell is annotated, a backbone
    against itself is hatched ("self": 1 by construction), undefined cells show "–".
    """
    missing = [c for c in TRANSFER_MATRIX_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"transfer matrix lacks columns {missing}")
    if table.empty:
        raise DataError(f"{out_png}: empty transfer matrix")
    sources = list(dict.fromkeys(table["source"]))
    evaluators = list(dict.fromkeys(table["evaluator"]))
    source_kind = dict(zip(table["source"], table["source_kind"]))
    evaluator_kind = dict(zip(table["evaluator"], table["evaluator_kind"]))
    indexed = table.set_index(["source", "evaluator"])
    n_values = sorted(set(table["n"].astype(int)))
    figure = Figure(figsize=(2.2 + 2 * 0.9 * len(evaluators) + 1.5, 1.6 + 0.55 * len(sources)))
    axes = figure.subplots(1, 2, sharey=True)
    image = None
    for ax, column, title in zip(axes, ("spearman", "partial_spearman"),
                                 ("Spearman ρ", "partial ρ (mask foreground fraction controlled)")):
        values = np.array([[indexed.at[(s, e), column] for e in evaluators] for s in sources], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for i, source in enumerate(sources):
            for j, evaluator in enumerate(evaluators):
                value = values[i, j]
                if source == evaluator:
                    ax.add_patch(_self_patch(j, i))
                    ax.text(j, i, "self", ha="center", va="center", fontsize=7, color="0.3")
                    continue
                ax.text(j, i, "–" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(value) > 0.6 else "black")
        for position in _boundaries([evaluator_kind[e] for e in evaluators]):
            ax.axvline(position - 0.5, color="black", linewidth=1.5)
        for position in _boundaries([source_kind[s] for s in sources]):
            ax.axhline(position - 0.5, color="black", linewidth=1.5)
        ax.set_xticks(range(len(evaluators)),
                      [f"{e}\n({_EVALUATOR_LABELS.get(evaluator_kind[e], evaluator_kind[e])})" for e in evaluators],
                      rotation=45, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("evaluator (whose hardness is predicted)", fontsize=8)
    axes[0].set_yticks(range(len(sources)),
                       [f"{s} ({_SOURCE_LABELS.get(source_kind[s], source_kind[s])})" for s in sources], fontsize=7)
    axes[0].set_ylabel("hardness source", fontsize=8)
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="rank correlation")
    n_text = str(n_values[0]) if len(n_values) == 1 else f"{n_values[0]}–{n_values[-1]}"
    figure.suptitle(f"hardness transfer over the generated samples of every variant pooled (n = {n_text})", fontsize=9)
    save_figure(figure, out_png)


def _self_patch(x: float, y: float) -> Rectangle:
    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="0.92", edgecolor="0.6", hatch="///", linewidth=0)
