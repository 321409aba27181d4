"""The inpainting variants' scenes (``sampling: inpaint``: ``inpaint``, ``hard_inpaint``): where each planned sample's
lesion goes and the condition image its Control-LoRA reads.

The frames are the real training images brought to the generation resolution by the training transform
(:func:`hardgen.core.io.fit_square`, with their conditions' masks as their lesions) and, for the placement ``frames``,
the lesion-free frames of ``data.background_frames`` (or the demo's procedural ones). Each sample's placement,
frame and position follow :mod:`hardgen.data.placement` from its own seed, so ``inpaint`` and ``hard_inpaint`` draw
the same lesions into the same frames. The condition image is made from the sample's label (:func:`hardgen.data.
conditioning.mask_to_condition`, ``condition.*`` as the training conditions), so it shows every lesion of the image:
for ``relocated`` the placed mask and the frame's own. The pixels are drawn by :mod:`hardgen.models.inpainting`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hardgen.core.io import DataError, fit_square, read_mask, read_rgb, table_or_csv
from hardgen.data.conditioning import mask_to_condition
from hardgen.data.placement import (
    Frame,
    Scene,
    area_range,
    assign_placements,
    background_files,
    check_placements,
    plan_scene,
)
from hardgen.data.train_data import load_training_pairs

log = logging.getLogger("hardgen.generator.inpaint")


@dataclass(frozen=True)
class InpaintSettings:
    """``generation.inpaint`` (``dilate`` px, ``feather`` px, ``placements``) and the ``condition.*`` keys the
    condition images are made with (``condition.type``, the Canny thresholds)."""

    dilate: int
    feather: int
    placements: tuple[str, ...]
    condition: str = "mask"
    canny_low: int = 100
    canny_high: int = 200

    def check(self) -> None:
        """Raise ValueError naming the config key of a value that cannot work."""
        if self.dilate < 0 or self.feather < 0:
            raise ValueError(f"generation.inpaint.dilate / feather must be >= 0, got {self.dilate}, {self.feather}")
        if self.feather > self.dilate:
            raise ValueError(f"generation.inpaint.feather ({self.feather}) must not exceed generation.inpaint.dilate "
                             f"({self.dilate}): the mask itself must be fully generated")
        check_placements(self.placements)


@dataclass(frozen=True)
class InpaintScene:
    """A sample's :class:`~hardgen.data.placement.Scene` and the condition image of its label."""

    scene: Scene
    condition: np.ndarray


class ScenePlanner:
    """The scenes of planned samples: ``samples`` (``sample_id, condition_id, mask``: the plan's rows, or one per
    condition), ``conditions`` (the training conditions table: ``sample_id, source_id, kind, condition, mask``) and the
    data ``manifest`` give the training frames, ``backgrounds`` (a folder, or None) the lesion-free ones; every frame at
    ``resolution``. Calling it with sample ids and their seeds gives their :class:`InpaintScene` s."""

    def __init__(self, samples: pd.DataFrame, conditions: str | Path, manifest: str | Path,
                 backgrounds: str | Path | None, settings: InpaintSettings, resolution: int) -> None:
        settings.check()
        self.settings, self.resolution = settings, resolution
        name, table = table_or_csv(conditions, "conditions table", dtype={"sample_id": str, "source_id": str},
                                   required_columns=("sample_id", "source_id", "kind"))
        kinds = table.set_index("sample_id")["kind"].astype(str)
        condition_ids = samples["condition_id"] if "condition_id" in samples.columns else samples["sample_id"]
        self.condition_of = dict(zip(samples["sample_id"].astype(str), condition_ids.astype(str), strict=True))
        self.mask_of = dict(zip(samples["sample_id"].astype(str), samples["mask"], strict=True))
        unknown = sorted(set(self.condition_of.values()) - set(kinds.index))
        if unknown:
            raise DataError(f"{name}: condition id(s) {unknown[:5]} of the samples are not in the conditions table")
        layouts = [sid for sid, cid in self.condition_of.items() if kinds[cid] != "real"]
        self.placement_of = assign_placements(list(self.condition_of), layouts, settings.placements)
        pairs = load_training_pairs(conditions, manifest)
        sources = table.set_index("sample_id")["source_id"].astype(str)
        self.frames = {
            str(row.sample_id): Frame(str(row.sample_id), sources[str(row.sample_id)],
                                      fit_square(read_rgb(row.image), resolution),
                                      fit_square(read_mask(row.mask), resolution, is_mask=True))
            for row in pairs.itertuples(index=False)}
        self.areas = area_range([frame.lesion for frame in self.frames.values()])
        self.backgrounds: list[Frame] = []
        if "frames" in set(self.placement_of.values()):
            if backgrounds is None:
                raise DataError("generation.inpaint.placements: 'frames' needs data.background_frames (a folder of "
                                "lesion-free frames)")
            empty = np.zeros((resolution, resolution), bool)
            self.backgrounds = [Frame(path.stem, path.stem, fit_square(read_rgb(path), resolution), empty)
                                for path in background_files(backgrounds)]

    def own_frame(self, condition_id: str) -> Frame | None:
        """The training frame of a condition (None for a layout, which has no image of its own)."""
        return self.frames.get(condition_id)

    def __call__(self, sample_ids: list[str], seeds: list[int]) -> list[InpaintScene]:
        out = []
        frames = list(self.frames.values())
        for sid, seed in zip(sample_ids, seeds, strict=True):
            mask = fit_square(read_mask(self.mask_of[sid]), self.resolution, is_mask=True)
            own = self.own_frame(self.condition_of[sid])
            scene = plan_scene(self.placement_of[sid], mask, own, frames, self.backgrounds, int(seed),
                               self.settings.dilate, self.areas, sid)
            if scene.placement != self.placement_of[sid]:
                log.warning("sample %s: its lesion fits no %s frame (at a real lesion's scale, off the frame's own "
                            "lesion): drawn in place, so recorded", sid, self.placement_of[sid])
            condition = mask_to_condition(scene.label, self.settings.condition, self.settings.canny_low,
                                          self.settings.canny_high)
            out.append(InpaintScene(scene, condition))
        return out
