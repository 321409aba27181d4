"""Shared fixtures. Tests run on CPU with tiny models; no network, no hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Keep thread pools small on the 2-core CI machine and never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: The test files that run whole workflows or train for tens of seconds, longest first (measured on 2 cores). `make
#: test` runs the suite on two pytest-xdist workers, one file at a time per worker (``--dist loadfile``: a file's
#: module fixtures, e.g. a finished workflow run, are built once; ``--no-loadscope-reorder``: in this order, not by
#: test count); these files are handed out first, so the two
#: workers finish together instead of one starting a workflow run when the other is done (longest processing time
#: first). The order changes when tests run, never what they check.
LONGEST_FIRST = ("test_workflow.py", "test_workflow_datasets.py", "test_pretrain_adapter.py", "test_train.py",
                 "test_rerun_triggers.py", "test_rehearsal.py", "test_condition_path.py", "test_config.py",
                 "test_pretrain_decoder.py", "test_pretrain.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: a file keeps its order


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for in-process tests: on the 2-core CI machine oversubscribed OpenMP threads make the
    tiny models 5-10x slower. Workflow jobs set their own threads (``devices.configure_torch``)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[Path, Path]:
    """The tiny random SD (built once per module) and a Control-LoRA file with non-zero B (so it acts)."""
    import torch

    from hardgen.models.base_model import build_tiny_sd, load_components
    from hardgen.models.control_lora import (
        add_control_lora,
        save_control_lora,
        widen_conv_in,
    )

    root = tmp_path_factory.mktemp("tiny")
    base = root / "base"
    build_tiny_sd(repo_root / "resources" / "tiny-sd", base, seed=0)
    unet = load_components(base)["unet"]
    widen_conv_in(unet, num_conditions=1)
    add_control_lora(unet, "condition", preset="half_skip_attn", rank=4, conv_in_rank=8)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    lora = save_control_lora(root / "lora", unet, "condition")
    return base, lora


def ellipse_pairs(folder: Path, variants: list[str]):
    """Polyp-like pairs on disk (72 x 80 px noise, a coloured ellipse and its mask), one per entry of ``variants``:
    the table ``image, mask, sample_id, variant`` that the segmenter code reads."""
    import numpy as np
    import pandas as pd

    from hardgen.core.io import write_image, write_mask

    rng = np.random.default_rng(0)
    rows = []
    for i, variant in enumerate(variants):
        yy, xx = np.mgrid[:72, :80]
        mask = ((yy - 30 - i) / (9 + i)) ** 2 + ((xx - 40) / 14) ** 2 < 1
        image = rng.integers(0, 80, (72, 80, 3)).astype(np.uint8)
        image[mask] = (200, 90 + 10 * i, 80)
        write_image(folder / f"img{i}.png", image)
        write_mask(folder / f"mask{i}.png", mask)
        rows.append({"image": str(folder / f"img{i}.png"), "mask": str(folder / f"mask{i}.png"),
                     "sample_id": f"s{i}", "variant": variant})
    return pd.DataFrame(rows)
