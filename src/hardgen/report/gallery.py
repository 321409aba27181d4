"""Look, don't read: the hardest and the rejected samples of every variant, and real vs generated features.

``hardest.png``: per variant, the ``k`` samples with the highest fused hardness (mean z over ``hard.loss_backbones``,
the score the hard generator was trained on) among those the fidelity guard keeps, and the ``k`` it rejects
(``fidelity < filter.min_fidelity``, lowest fidelity first), each image beside its mask with its hardness and fidelity.
``inpainting.png``: the inpainting variants' samples beside their real frame and mask, per placement.
``features.png``: a PCA of the backbone features of the real training images (grey) and of each variant's samples,
one panel per variant and backbone, as in the paper's analysis (which used t-SNE; PCA is deterministic and keeps
distances along its axes comparable between panels: one projection per backbone, fitted on every set together).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from safetensors import safe_open
from sklearn.decomposition import PCA

from hardgen.core.io import DataError, read_gray, read_rgb, table_or_csv
from hardgen.report.tables import (
    VARIANT_ORDER,
    in_display_order,
    read_scores,
    save_figure,
)
from hardgen.scoring.fidelity import passes

log = logging.getLogger(__name__)

#: Columns of :func:`hardest_and_rejected`.
GALLERY_COLUMNS: list[str] = ["variant", "group", "rank", "sample_id", "hardness", "fidelity"]


def sample_hardness(scores: pd.DataFrame | Sequence[str | Path], loss_backbones: Sequence[str]) -> pd.DataFrame:
    """Per generated sample: ``variant, sample_id, hardness, fidelity``.

    ``hardness`` is the fused score, the mean z over ``loss_backbones`` (every one must score the sample).
    ``fidelity`` is the score tables' ``fidelity`` column (the fidelity guard, 0..1), NaN where the tables have
    none; when a sample's rows disagree, its lowest value (the guard's worst reading of it).
    """
    scores = read_scores(scores)
    if "z" not in scores.columns:
        raise DataError(f"score tables lack column 'z' (have {list(scores.columns)})")
    generated = scores[scores["variant"].astype(str) != "real"].astype({"variant": str, "sample_id": str})
    if generated.empty:
        raise DataError("score tables: no generated samples (only variant 'real')")
    unknown = sorted(set(map(str, loss_backbones)) - set(generated["backbone"].astype(str)))
    if unknown or not loss_backbones:
        raise ValueError(f"hard.loss_backbones: {unknown or '[]'} must name scored backbones")
    in_loss = generated[generated["backbone"].astype(str).isin(set(map(str, loss_backbones)))]
    z = in_loss.pivot_table(index=["variant", "sample_id"], columns="backbone", values="z", aggfunc="first")
    if z.isna().any().any():
        raise DataError(f"score tables: samples {z.index[z.isna().any(axis=1)].tolist()[:3]} lack an in-loss z")
    table = z.mean(axis=1).rename("hardness").to_frame()
    if "fidelity" in generated.columns:
        fidelity = pd.to_numeric(generated["fidelity"], errors="coerce")
        table["fidelity"] = fidelity.groupby([generated["variant"], generated["sample_id"]]).min()
    else:
        table["fidelity"] = np.nan
    return table.reset_index()


def hardest_and_rejected(hardness: pd.DataFrame, min_fidelity: float | None, k: int = 4) -> pd.DataFrame:
    """Per variant the ``k`` hardest kept samples and the ``k`` rejected ones (:data:`GALLERY_COLUMNS`).

    ``hardness``: :func:`sample_hardness`. A sample is rejected when ``fidelity < min_fidelity`` (the guard keeps
    ``fidelity >= min_fidelity``); without ``min_fidelity`` or fidelity scores nothing is rejected. ``hardest``:
    highest hardness among the kept samples; ``rejected``: lowest fidelity first. Ties break on sample id.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = []
    for variant in in_display_order(hardness["variant"], VARIANT_ORDER):
        samples = hardness[hardness["variant"] == variant].sort_values("sample_id")
        if min_fidelity is None or samples["fidelity"].isna().all():
            rejected = pd.Series(False, index=samples.index)
        else:  # the guard's own rule (hardgen.scoring.fidelity.passes: fidelity >= filter.min_fidelity)
            rejected = pd.Series(~passes(samples["fidelity"], min_fidelity), index=samples.index)
        groups = {
            "hardest": samples[~rejected].sort_values("hardness", ascending=False, kind="stable").head(k),
            "rejected": samples[rejected].sort_values("fidelity", kind="stable").head(k),
        }
        for group, chosen in groups.items():
            for rank, row in enumerate(chosen.itertuples(index=False), start=1):
                rows.append({"variant": variant, "group": group, "rank": rank, "sample_id": row.sample_id,
                             "hardness": float(row.hardness), "fidelity": float(row.fidelity)})
    return pd.DataFrame(rows, columns=GALLERY_COLUMNS)


def plot_hardest(
    hardness: pd.DataFrame,
    generated: Mapping[str, str | Path | pd.DataFrame],
    out_png: str | Path,
    min_fidelity: float | None,
    k: int = 4,
) -> pd.DataFrame:
    """Two rows per variant (its hardest kept samples, then the rejected ones), each sample as image | mask.

    ``hardness``: :func:`sample_hardness`; ``generated``: ``{variant: manifest}`` (``sample_id, image, mask``).
    The samples are those of :func:`hardest_and_rejected` (returned) among the scored samples the manifests hold
    (a plot shows images: scored samples or variants without one are left out, with a warning naming how many).
    Titles give the fused hardness z and the fidelity; an empty row says why it is empty.
    """
    manifests = {}
    for variant, source in generated.items():
        _, table = table_or_csv(source, f"generated manifest ({variant})", dtype={"sample_id": str},
                                required_columns=("sample_id", "image", "mask"))
        manifests[variant] = table.astype({"sample_id": str}).drop_duplicates("sample_id").set_index("sample_id")
    unshown = sorted(set(hardness["variant"]) - set(manifests))
    if unshown:
        log.warning("%s: no generated manifest for variants %s: left out", out_png, unshown)
    shown = hardness[hardness["variant"].isin(list(manifests))]
    has_image = np.array([sid in manifests[v].index for v, sid in zip(shown["variant"], shown["sample_id"])], bool)
    if (~has_image).any():
        log.warning("%s: %d scored samples have no image in their generated manifest: left out", out_png,
                    int((~has_image).sum()))
    shown = shown[has_image]
    variants = in_display_order(shown["variant"], VARIANT_ORDER)
    if not variants:
        raise DataError(f"{out_png}: no scored sample has an image in the generated manifests")
    selection = hardest_and_rejected(shown, min_fidelity, k)
    figure = Figure(figsize=(1.5 * 2 * k + 1.0, 1.75 * 2 * len(variants)))
    axes = figure.subplots(2 * len(variants), 2 * k, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    guard = "no guard: filter.min_fidelity unset" if min_fidelity is None else f"fidelity < {min_fidelity:g}"
    for v, variant in enumerate(variants):
        scored = shown.loc[shown["variant"] == variant, "fidelity"].notna().any()
        for g, group in enumerate(("hardest", "rejected")):
            r = 2 * v + g
            axes[r, 0].set_ylabel(f"{variant}\nhardest kept" if group == "hardest" else f"{variant}\nrejected",
                                  fontsize=7)
            chosen = selection[(selection["variant"] == variant) & (selection["group"] == group)]
            if chosen.empty:
                if group == "hardest":
                    why = "every sample rejected"
                elif min_fidelity is None:
                    why = guard
                else:
                    why = f"nothing rejected ({guard})" if scored else "no fidelity scores in the score table"
                axes[r, 0].text(0.05, 0.5, why, fontsize=8, va="center", transform=axes[r, 0].transAxes)
                continue
            for c, row in enumerate(chosen.sort_values("rank").itertuples(index=False)):
                entry = manifests[variant].loc[row.sample_id]
                image_ax, mask_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
                image_ax.imshow(read_rgb(entry["image"]))
                mask_ax.imshow(read_gray(entry["mask"]), cmap="gray", vmin=0, vmax=255)
                fidelity = "" if np.isnan(row.fidelity) else f" · fid {row.fidelity:.2f}"
                image_ax.set_title(f"z {row.hardness:+.2f}{fidelity}", fontsize=7)
                mask_ax.set_title(str(row.sample_id), fontsize=6)
    figure.suptitle(f"per variant: the {k} hardest samples the guard keeps, and the {k} it rejects ({guard}); "
                    "z = mean over the in-loss backbones", fontsize=9)
    save_figure(figure, out_png)
    return selection


# ----------------------------------------------------------------------------------------------- inpainting
def plot_inpainting(generated: Mapping[str, str | Path | pd.DataFrame], out_png: str | Path, k: int = 2
                    ) -> pd.DataFrame:
    """Lesions in real frames side by side: per placement, ``k`` samples (the first sample ids every variant has), each
    row the real frame, the label with the region redrawn outlined, then each inpainting variant's image (columns
    frame, mask, inpaint, hard_inpaint: the same scene for every variant, drawn by its LoRA).

    ``generated``: ``{variant: manifest}`` of the inpainting variants (``sample_id, image, mask, placement, frame,
    region``). Returns the rows shown (``placement, sample_id``)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    manifests = {}
    for variant, source in generated.items():
        _, table = table_or_csv(source, f"generated manifest ({variant})", dtype={"sample_id": str},
                                required_columns=("sample_id", "image", "mask", "placement", "frame", "region"))
        manifests[variant] = table.astype({"sample_id": str}).set_index("sample_id")
    if not manifests:
        raise DataError(f"{out_png}: no inpainting variant's manifest")
    variants = in_display_order(manifests, VARIANT_ORDER)
    first = manifests[variants[0]]
    common = sorted(set.intersection(*(set(m.index) for m in manifests.values())))
    shown = (first.loc[common].reset_index().groupby("placement", sort=False).head(k)[["placement", "sample_id"]]
             .reset_index(drop=True))
    if shown.empty:
        raise DataError(f"{out_png}: the inpainting variants' manifests share no sample")
    figure = Figure(figsize=(1.6 * (2 + len(variants)), 1.7 * len(shown) + 0.4))
    axes = figure.subplots(len(shown), 2 + len(variants), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for r, row in enumerate(shown.itertuples(index=False)):
        entry = first.loc[row.sample_id]
        label, region = read_gray(entry["mask"]) > 127, read_gray(entry["region"]) > 127
        outline = np.repeat(label[..., None] * 255, 3, axis=2).astype(np.uint8)
        padded = np.pad(region, 1, mode="edge")
        inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        outline[region & ~inside] = (255, 160, 0)  # the region's border: outside it the sample is the frame
        images = [read_rgb(entry["frame"]), outline, *(read_rgb(manifests[v].loc[row.sample_id, "image"])
                                                       for v in variants)]
        for c, image in enumerate(images):
            axes[r, c].imshow(image)
        axes[r, 0].set_ylabel(f"{row.placement}\n{row.sample_id}", fontsize=6)
    for c, title in enumerate(["frame", "mask (region outlined)", *variants]):
        axes[0, c].set_title(title, fontsize=8)
    figure.suptitle("lesions drawn into real frames: outside the region the sample is the frame", fontsize=9)
    save_figure(figure, out_png)
    return shown


# ------------------------------------------------------------------------------------------------- features
def read_features(path: str | Path) -> tuple[str, list[str], dict[str, np.ndarray]]:
    """Read a ``results/scores/<variant>.features.safetensors`` (:func:`hardgen.scoring.score.save_features`), no torch.

    Returns ``(variant, sample_ids, {backbone key: (N, D) float32})``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as err:  # safetensors raises its own error types for foreign or truncated bytes
        raise DataError(f"{path}: unreadable feature file ({err})") from err
    if "variant" not in metadata or "sample_ids" not in metadata:
        raise DataError(f"{path}: not a hardgen feature file (metadata lacks variant / sample_ids)")
    ids = [str(s) for s in json.loads(metadata["sample_ids"])]
    for key, array in arrays.items():
        if array.ndim != 2 or array.shape[0] != len(ids):
            raise DataError(f"{path}: features of {key!r} have shape {array.shape} for {len(ids)} samples")
    return metadata["variant"], ids, arrays


def plot_features(
    feature_files: Mapping[str, str | Path], loss_backbones: Sequence[str], out_png: str | Path
) -> dict[str, tuple[float, float]]:
    """PCA of real (grey) vs generated features: rows backbones, columns variants; the real mean (the prototype) as ★.

    ``feature_files``: ``{scored set: path}`` including ``real``. One PCA per backbone, fitted on the real and every
    generated set together, so the panels of a row share axes. Returns ``{backbone: explained variance of PC1, PC2}``.
    """
    sets = {name: read_features(path) for name, path in feature_files.items()}
    if "real" not in sets:
        raise DataError(f"{out_png}: no real features (results/scores/real.features.safetensors) to compare with")
    variants = [v for v in in_display_order(sets, VARIANT_ORDER) if v != "real"]
    if not variants:
        raise DataError(f"{out_png}: no generated feature sets")
    backbones = list(sets["real"][2])
    for name, (_, _, arrays) in sets.items():
        if list(arrays) != backbones:
            raise DataError(f"{feature_files[name]}: backbones {list(arrays)} differ from the real set's {backbones}")
    in_loss = set(map(str, loss_backbones))
    backbones = sorted(backbones, key=lambda b: (b not in in_loss, b))
    figure = Figure(figsize=(2.9 * len(variants) + 0.5, 2.8 * len(backbones)), layout="constrained")
    axes = figure.subplots(len(backbones), len(variants), squeeze=False, sharex="row", sharey="row")
    explained = {}
    for r, backbone in enumerate(backbones):
        stacked = np.concatenate([sets[name][2][backbone] for name in ["real", *variants]]).astype(np.float64)
        pca = PCA(n_components=2, svd_solver="full").fit(stacked)
        explained[backbone] = tuple(float(v) for v in pca.explained_variance_ratio_)
        real = pca.transform(sets["real"][2][backbone].astype(np.float64))
        prototype = pca.transform(sets["real"][2][backbone].astype(np.float64).mean(axis=0, keepdims=True))[0]
        kind = "in loss" if backbone in in_loss else "held out"
        for c, variant in enumerate(variants):
            ax = axes[r, c]
            points = pca.transform(sets[variant][2][backbone].astype(np.float64))
            ax.scatter(real[:, 0], real[:, 1], s=5, color="0.6", alpha=0.6, linewidths=0, label=f"real ({len(real)})")
            ax.scatter(points[:, 0], points[:, 1], s=5, color=f"C{c}", alpha=0.7, linewidths=0,
                       label=f"{variant} ({len(points)})")
            ax.scatter([prototype[0]], [prototype[1]], marker="*", s=90, color="black", label="real mean")
            ax.set_title(f"{variant} · {backbone} ({kind})", fontsize=8)
            ax.set_xlabel(f"PC1 ({explained[backbone][0]:.0%})", fontsize=7)
            ax.set_ylabel(f"PC2 ({explained[backbone][1]:.0%})", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6, loc="best")
    save_figure(figure, out_png)
    return explained
