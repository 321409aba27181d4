"""What a generation call is made of, shared by :mod:`hardgen.generator.generate` (the shard loop),
:mod:`hardgen.generator.mining` and :mod:`hardgen.models.inpainting` (the training-free variants): the sampling
settings of one pipeline call, the renderer and noise-picker types and the conversion of its [0, 1] images to uint8.
Below them, so none imports another to get them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

#: A batch renderer: (condition images HxWx3 uint8, one generator per image, masks HxW bool at the generation
#: resolution) -> (B, H, W, 3) uint8. Plain rendering ignores the masks; ``guided`` crops to them.
RenderBatch = Callable[[list[np.ndarray], list[torch.Generator], list[np.ndarray]], np.ndarray]

#: An inpainting renderer (``inpaint``, :mod:`hardgen.models.inpainting`): (condition images, one generator per
#: image, the real frames HxWx3 uint8, the regions redrawn HxW bool, the lesions HxW bool) -> (B, H, W, 3) uint8,
#: each the frame outside its region.
RenderInto = Callable[[list[np.ndarray], list[torch.Generator], list[np.ndarray], list[np.ndarray], list[np.ndarray]],
                      np.ndarray]

@dataclass(frozen=True)
class PickedNoise:
    """The initial noise a sample is rendered from: its seed, and which mining candidate it was (with its score)."""

    seed: int
    candidate: int = 0
    score: float | None = None

#: A noise picker (``mined``): (condition images, masks, the samples' own seeds) -> one :class:`PickedNoise` each.
PickNoise = Callable[[list[np.ndarray], list[np.ndarray], list[int]], list[PickedNoise]]

def unit_to_uint8(images01: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] (float, ``output_type="np"``) -> uint8, rounding once and only here."""
    return (np.clip(np.asarray(images01, dtype=np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)

@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one pipeline call (``model.prompt``/``resolution``, ``generation.*``).

    Calling it runs the pipeline on a batch of condition images with one generator per image; every variant
    (plain rendering, the mining prefix, guided rendering) samples through this one call, so they share the
    prompt, schedule, CFG and condition scale by construction. ``extra`` goes to the pipeline as is
    (``callback_on_step_end``, ``output_type``, ...).
    """

    prompt: str
    resolution: int
    steps: int
    guidance_scale: float = 1.0
    condition_scale: float = 1.0

    def __call__(self, pipe: Any, condition_images: list[np.ndarray], generators: list[torch.Generator],
                 **extra: Any) -> Any:
        # one PIL image per distinct array object: the pipeline encodes each distinct condition object once
        pil: dict[int, Image.Image] = {}
        for c in condition_images:
            if id(c) not in pil:
                pil[id(c)] = Image.fromarray(c)
        return pipe(
            prompt=[self.prompt] * len(condition_images),
            condition=[pil[id(c)] for c in condition_images],
            condition_scale=self.condition_scale,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            generator=generators,
            height=self.resolution,
            width=self.resolution,
            **{"output_type": "np", **extra},
        )
