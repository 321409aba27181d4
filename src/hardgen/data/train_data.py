"""Training data of the Control-LoRA: real image / condition / mask triples, a resumable batch order, prompts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hardgen.core.io import (
    DataError,
    fit_square,
    read_csv_table,
    read_mask,
    read_rgb,
    resolve_table_path,
)

# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def load_training_pairs(conditions_csv: str | Path, manifest_csv: str | Path) -> pd.DataFrame:
    """Real training rows as a table (sample_id, image, condition, mask) with resolved paths.

    ``conditions_csv`` rows with ``kind == "real"`` are joined to the manifest on source_id == id. A missing file or
    column is a :class:`DataError` naming it.
    """
    conditions_csv, manifest_csv = Path(conditions_csv), Path(manifest_csv)
    conditions = read_csv_table(conditions_csv, ("sample_id", "source_id", "kind", "condition", "mask"),
                                "conditions table")
    manifest = read_csv_table(manifest_csv, ("id", "image"), "data manifest")
    real = conditions[conditions["kind"] == "real"]
    if real.empty:
        raise DataError(f"{conditions_csv}: no rows with kind == 'real'")
    merged = real.merge(manifest[["id", "image"]].astype({"id": str}),
                        left_on=real["source_id"].astype(str), right_on="id", how="left")
    unmatched = merged[merged["image"].isna()]
    if not unmatched.empty:
        raise DataError(f"{conditions_csv}: source_id {unmatched['source_id'].iloc[0]!r} not in {manifest_csv}")
    rows = pd.DataFrame({
        "sample_id": merged["sample_id"].astype(str),
        "image": [resolve_table_path(p, manifest_csv, "image") for p in merged["image"]],
        "condition": [resolve_table_path(p, conditions_csv, "condition") for p in merged["condition"]],
        "mask": [resolve_table_path(p, conditions_csv, "mask") for p in merged["mask"]],
    })
    return rows.sort_values("sample_id", kind="stable").reset_index(drop=True)


class PairDataset(torch.utils.data.Dataset):
    """Real image, its condition image (both in [-1, 1], 3×R×R) and its mask (1×R×R in {0, 1})."""

    def __init__(self, pairs: pd.DataFrame, resolution: int) -> None:
        self.pairs = pairs
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.pairs)

    def _rgb(self, path: Path) -> torch.Tensor:
        # aspect ratio kept: short side to the resolution (area when shrinking), centre crop
        array = fit_square(read_rgb(path), self.resolution)
        return torch.from_numpy(array).permute(2, 0, 1).float() / 127.5 - 1.0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.pairs.iloc[index]
        # the condition table's mask is already at the resolution (same transform); nearest keeps it binary
        mask = fit_square(read_mask(row["mask"]), self.resolution, is_mask=True).astype(np.uint8)
        return {
            "pixels": self._rgb(row["image"]),
            "condition": self._rgb(row["condition"]),
            "mask": torch.from_numpy(mask).float()[None],
            "index": torch.tensor(index),
        }


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    """An endless, seeded stream of batches that can start at any micro-step.

    The sample stream is the concatenation of per-epoch permutations (epoch e uses ``seed + e``);
    micro-batch k of process p takes stream positions ``[(k·P + p)·B, (k·P + p + 1)·B)``. The order is
    therefore a pure function of (seed, k), so a resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, start_micro_step: int = 0,
                 num_processes: int = 1, process_index: int = 0) -> None:
        if n_items < 1:
            raise ValueError("ResumableBatchSampler: empty dataset")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start, self.num_processes, self.process_index = start_micro_step, num_processes, process_index

    def _epoch(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n_items, generator=torch.Generator().manual_seed(self.seed + epoch))

    def positions(self, micro_step: int) -> range:
        """The global stream positions of one micro-batch for this process."""
        first = (micro_step * self.num_processes + self.process_index) * self.batch_size
        return range(first, first + self.batch_size)

    def batch(self, micro_step: int) -> list[int]:
        """The indices of one micro-batch for this process."""
        out: list[int] = []
        cached: dict[int, torch.Tensor] = {}
        for pos in self.positions(micro_step):
            epoch = pos // self.n_items
            if epoch not in cached:
                cached[epoch] = self._epoch(epoch)
            out.append(int(cached[epoch][pos % self.n_items]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.start
        while True:
            yield self.batch(micro)
            micro += 1


def pair_batches(dataset: PairDataset, sampler: ResumableBatchSampler, num_workers: int, seed: int) -> Iterator[dict]:
    """The training batches: a DataLoader over ``dataset`` in ``sampler``'s order, as an iterator."""
    # A private generator keeps DataLoader's worker seeding off the global RNG, which accelerate
    # checkpoints; otherwise creating the iterator after a resume would shift the random stream.
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed),
                                         persistent_workers=False)
    return iter(loader)


# --------------------------------------------------------------------------------------------------
# Text conditioning
# --------------------------------------------------------------------------------------------------


@dataclass
class PromptEmbeddings:
    """Frozen text conditioning for the prompt and the empty prompt (dropped with empty_prompt_prob)."""

    prompt: torch.Tensor  # (1, L, C)
    empty: torch.Tensor
    pooled_prompt: torch.Tensor | None = None  # SDXL only, (1, C2)
    pooled_empty: torch.Tensor | None = None


def _tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    return tokenizer([text], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompts(components: dict[str, Any], prompt: str, family: str, device: torch.device) -> PromptEmbeddings:
    """Encode the prompt and "" once; the text encoders are frozen so this is exact and cheap."""

    def sd15(text: str) -> tuple[torch.Tensor, None]:
        ids = _tokenize(components["tokenizer"], text).to(device)
        return components["text_encoder"](ids).last_hidden_state, None

    def sdxl(text: str) -> tuple[torch.Tensor, torch.Tensor]:
        # SDXL conditions on the penultimate hidden states of both encoders, plus the pooled
        # (projected) embedding of the second one.
        hidden = []
        pooled = None
        for enc_key, tok_key in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            out = components[enc_key](_tokenize(components[tok_key], text).to(device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if enc_key == "text_encoder_2":
                pooled = out.text_embeds
        return torch.cat(hidden, dim=-1), pooled

    encode = sdxl if family == "sdxl" else sd15
    prompt_h, prompt_p = encode(prompt)
    empty_h, empty_p = encode("")
    return PromptEmbeddings(prompt_h, empty_h, prompt_p, empty_p)
