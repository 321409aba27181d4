"""FreeMask's pixel filter (segment.pixel_filter): the bound, the class means, the masked structure loss, and the
ignore maps' way through augmentation and multi-scale training into the loss."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import ellipse_pairs

from hardgen.benchmark.records import write_run_record
from hardgen.core.io import DataError
from hardgen.scoring import pixel_filter
from hardgen.segmentation import losses as segmentation_losses
from hardgen.segmentation.build import SegmenterSpec, build_segmenter
from hardgen.segmentation.datasets import FilteredSegmentationPairs, SegmentationPairs
from hardgen.segmentation.losses import structure_loss, structure_loss_per_sample
from hardgen.segmentation.recipes import SegmentRecipe
from hardgen.segmentation.training import train_segmenter

FAST_SPEC = SegmenterSpec(arch="Segformer", encoder="mit_b0")


@pytest.fixture()
def pairs_df(tmp_path: Path) -> pd.DataFrame:
    """Two real and four synthetic polyp-like pairs (72 x 80 px, ellipse masks), on disk."""
    return ellipse_pairs(tmp_path, ["real"] * 2 + ["hard"] * 4)


# ------------------------------------------------------------------------------------------- the bound
def test_ignore_mask_flags_exactly_the_pixels_above_their_class_bound() -> None:
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    means = (0.2, 0.5)  # background, polyp
    factor = 2.0  # bounds: background 0.4, polyp 1.0
    loss = np.full((4, 6), 0.1)
    above_bg = [(0, 0), (3, 5)]       # background pixels above 0.4
    at_bg = [(0, 1)]                  # exactly 0.4: kept
    above_fg = [(1, 2), (2, 4)]       # polyp pixels above 1.0
    fg_bg_only = [(1, 3)]             # 0.7: above the background bound but below the polyp one -> kept
    at_fg = [(2, 3)]                  # exactly 1.0: kept
    for r, c in above_bg:
        loss[r, c] = 0.4 + 1e-6
    for r, c in at_bg:
        loss[r, c] = 0.4
    for r, c in above_fg:
        loss[r, c] = 1.5
    for r, c in fg_bg_only:
        loss[r, c] = 0.7
    for r, c in at_fg:
        loss[r, c] = 1.0
    expected = np.zeros((4, 6), dtype=bool)
    for r, c in above_bg + above_fg:
        expected[r, c] = True
    ignored = pixel_filter.ignore_mask(loss, mask, means, factor)
    assert ignored.dtype == bool
    np.testing.assert_array_equal(ignored, expected)
    # a larger factor only ever ignores fewer pixels; a huge one none
    assert not (pixel_filter.ignore_mask(loss, mask, means, 3.0) & ~ignored).any()
    assert not pixel_filter.ignore_mask(loss, mask, means, 1e6).any()
    with pytest.raises(ValueError, match="segment.pixel_filter"):
        pixel_filter.ignore_mask(loss, mask, means, 0.0)
    with pytest.raises(ValueError, match="equal shape"):
        pixel_filter.ignore_mask(loss, mask[:, :5], means, factor)


def test_class_means_pool_every_pixel_of_the_class_over_all_images() -> None:
    # two images of different sizes: FreeMask sums losses and counts pixels over the whole real set
    mask_a = np.array([[1, 0], [0, 0]], dtype=bool)
    loss_a = np.array([[1.0, 0.1], [0.2, 0.3]])
    mask_b = np.zeros((3, 3), dtype=bool)
    mask_b[1, 1:] = True
    loss_b = np.arange(9, dtype=float).reshape(3, 3)
    bg, fg = pixel_filter.class_mean_losses([(loss_a, mask_a), (loss_b, mask_b)])
    assert fg == pytest.approx((1.0 + 4.0 + 5.0) / 3)
    assert bg == pytest.approx((0.1 + 0.2 + 0.3 + 0 + 1 + 2 + 3 + 6 + 7 + 8) / 10)
    assert fg != pytest.approx((1.0 + 4.5) / 2)  # not a mean of per-image means
    with pytest.raises(DataError, match="no polyp pixels"):
        pixel_filter.class_mean_losses([(loss_b, np.zeros((3, 3), dtype=bool))])


def test_pixel_bce_is_the_unreduced_bce_term() -> None:
    torch.manual_seed(0)
    logits, mask = torch.randn(2, 1, 5, 7), (torch.rand(2, 1, 5, 7) > 0.5).float()
    expected = -(mask * F.logsigmoid(logits) + (1 - mask) * F.logsigmoid(-logits))[:, 0]
    assert torch.allclose(pixel_filter.pixel_bce(logits, mask), expected, atol=1e-6)


# -------------------------------------------------------------------------------------- masked loss
def test_structure_loss_with_valid_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 40, 40)
    mask = torch.zeros(3, 1, 40, 40)
    mask[..., 10:25, 12:30] = 1.0
    reference = structure_loss_per_sample(logits, mask)
    # an all-valid mask is the original loss, bit for bit
    assert torch.equal(structure_loss_per_sample(logits, mask, torch.ones_like(mask)), reference)
    assert torch.equal(structure_loss(logits, mask, torch.ones_like(mask)),
                       structure_loss(logits, mask))

    # ignored pixels do not reach the loss: changing the logits there changes nothing, elsewhere it does
    valid = torch.ones_like(mask)
    valid[..., :20, :] = 0.0
    masked = structure_loss_per_sample(logits, mask, valid)
    poked = logits.clone()
    poked[..., :20, :] += 5.0
    assert torch.allclose(structure_loss_per_sample(poked, mask, valid), masked, atol=1e-6)
    poked_valid = logits.clone()
    poked_valid[..., 30:, :] += 5.0
    assert not torch.allclose(structure_loss_per_sample(poked_valid, mask, valid), masked)

    # hand-computed: empty mask, zero logits -> weight 1, BCE ln 2 on every valid pixel, IoU over the valid ones
    size, kept = 16, 16 * 10
    half = torch.zeros(1, 1, size, size)
    half[..., :10, :] = 1.0
    value = structure_loss(torch.zeros(1, 1, size, size), torch.zeros(1, 1, size, size), half).item()
    assert value == pytest.approx(math.log(2.0) + 1.0 - 1.0 / (0.5 * kept + 1.0), rel=1e-6)
    # a sample with every pixel ignored contributes 0, not NaN
    nothing = structure_loss_per_sample(logits[:1], mask[:1], torch.zeros_like(mask[:1]))
    assert nothing.item() == 0.0
    with pytest.raises(ValueError, match="valid-pixel mask"):
        structure_loss(logits, mask, valid[..., :39])


# ------------------------------------------------------------------------------- through augmentation
def _resized_mask(pairs_df: pd.DataFrame, row: int, size: int) -> np.ndarray:
    return SegmentationPairs(pairs_df, size, augment=False)[row][1][0].numpy() > 0.5


def test_ignore_maps_follow_the_augmentation_of_the_mask(pairs_df: pd.DataFrame) -> None:
    size = 64
    plain = SegmentationPairs(pairs_df, size, augment=True)
    nothing = FilteredSegmentationPairs(pairs_df, size, [None] * 6)
    zeros = FilteredSegmentationPairs(pairs_df, size, [np.zeros((size, size), bool)] * 6)
    # the ignore map is the mask itself (at size, before augmentation): after any augmentation the two agree
    as_mask = FilteredSegmentationPairs(pairs_df, size, [_resized_mask(pairs_df, r, size) for r in range(6)])
    moved = 0
    for row in range(6):
        for seed in (1, 7, 123, 999):
            image, mask, _ = plain[(row, seed)]
            for dataset in (nothing, zeros, as_mask):
                image_f, mask_f, ignore, sid = dataset[(row, seed)]
                assert sid == f"s{row}" and ignore.shape == (1, size, size)
                assert torch.equal(image_f, image) and torch.equal(mask_f, mask)  # same pair, same augmentation
            assert not nothing[(row, seed)][2].any() and not zeros[(row, seed)][2].any()
            ignore = as_mask[(row, seed)][2]
            assert set(ignore.unique().tolist()) <= {0.0, 1.0}
            assert torch.equal(ignore, mask)
            moved += not np.array_equal(mask[0].numpy() > 0.5, _resized_mask(pairs_df, row, size))
    assert moved > 0  # the augmentation did move the masks (and the ignore maps with them)
    with pytest.raises(ValueError, match=r"expected \(64, 64\)"):
        FilteredSegmentationPairs(pairs_df, size, [np.zeros((32, 32), bool)] * 6)


def test_ignore_maps_reach_the_loss_at_every_scale(pairs_df: pd.DataFrame, tmp_path: Path, monkeypatch) -> None:
    size = 64
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    original = structure_loss

    def recording(logits, mask, valid=None, kind="structure"):
        seen.append((mask.detach().clone(), None if valid is None else valid.detach().clone()))
        return original(logits, mask, valid, kind)

    monkeypatch.setattr(segmentation_losses, "structure_loss", recording)
    synthetic = pairs_df.iloc[2:].reset_index(drop=True)
    # ignore each synthetic polyp: at scale 1 the valid map must be exactly 1 - mask after augmentation
    maps = [_resized_mask(synthetic, r, size) for r in range(len(synthetic))]
    recipe = SegmentRecipe(size=size, iterations=3, batch_size=2, learning_rate=1e-3, grad_clip=0.5,
                           multi_scale=(0.5, 1.0))
    summary = train_segmenter(synthetic, FAST_SPEC, tmp_path / "a", recipe, seed=0, ignore_masks=maps)
    assert len(seen) == 6
    for mask, valid in seen:
        assert valid is not None and valid.shape == mask.shape and set(valid.unique().tolist()) <= {0.0, 1.0}
        if mask.shape[-1] == size:
            assert torch.equal(valid, 1.0 - mask)
        else:  # 32 px: the nearest-resized map, where the bilinear mask is confidently polyp it is ignored
            assert mask.shape[-1] == 32 and (valid[mask > 0.99] == 0).all() and (valid[mask < 0.01] == 1).all()
    fraction = float(np.mean([m.mean() for m in maps]))
    assert summary["ignored_pixel_fraction"] == pytest.approx(fraction)

    # every synthetic pixel ignored: only pixels the augmentation shifts in from outside the image (filled with
    # background in the mask and 0 = "not ignored" in the map) still count
    seen.clear()
    everything = [np.ones((size, size), bool)] * len(synthetic)
    recipe = SegmentRecipe(size=size, iterations=2, batch_size=2, learning_rate=1e-3, grad_clip=0.5)
    summary = train_segmenter(synthetic, FAST_SPEC, tmp_path / "b", recipe, seed=0, ignore_masks=everything)
    assert summary["ignored_pixel_fraction"] == 1.0
    for mask, valid in seen:
        assert (mask[valid > 0] == 0).all() and valid.mean() < 0.3

    # unfiltered and all-kept runs train the same model, bit for bit; run.json records the fraction (null: off)
    kept = train_segmenter(pairs_df, FAST_SPEC, tmp_path / "c", recipe, seed=0,
                           ignore_masks=[None, None] + [np.zeros((size, size), bool)] * 4)
    off = train_segmenter(pairs_df, FAST_SPEC, tmp_path / "d", recipe, seed=0)
    assert (kept["ignored_pixel_fraction"], off["ignored_pixel_fraction"]) == (0.0, None)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "c" / "train_log.csv"),
                                  pd.read_csv(tmp_path / "d" / "train_log.csv"))
    record = write_run_record(tmp_path / "run.json", "cnn", "hard", 0, kept)
    assert json.loads((tmp_path / "run.json").read_text())["ignored_pixel_fraction"] == 0.0 == record[
        "ignored_pixel_fraction"]
    write_run_record(tmp_path / "off.json", "cnn", "real", 0, off)
    assert json.loads((tmp_path / "off.json").read_text())["ignored_pixel_fraction"] is None

    with pytest.raises(ValueError, match="real pixels are never filtered"):
        train_segmenter(pairs_df, FAST_SPEC, tmp_path / "e", replace(recipe, iterations=1),
                        ignore_masks=[np.zeros((size, size), bool)] * 6)
    assert not (tmp_path / "e" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------ with a judge
def test_pixel_filter_masks_apply_the_real_class_means_to_the_synthetic_pixels(pairs_df: pd.DataFrame) -> None:
    size, factor = 64, 1.25
    torch.manual_seed(0)
    judge = build_segmenter(FAST_SPEC).eval()
    result = pixel_filter.pixel_filter_masks(judge, pairs_df, size, factor, batch_size=4)
    assert result.ignore[:2] == [None, None]  # real rows: never filtered

    # the reference, independently: eval resize, per-pixel BCE, means over the real pixels of each class
    dataset = SegmentationPairs(pairs_df, size, augment=False)
    with torch.no_grad():
        items = [dataset[r] for r in range(6)]
        losses = [F.binary_cross_entropy_with_logits(judge(img[None]), m[None], reduction="none")[0, 0].numpy()
                  for img, m, _ in items]
    masks = [m[0].numpy() > 0.5 for _, m, _ in items]
    real_loss, real_mask = np.concatenate([losses[0], losses[1]]), np.concatenate([masks[0], masks[1]])
    means = (real_loss[~real_mask].mean(), real_loss[real_mask].mean())
    assert result.class_means == pytest.approx(means, rel=1e-5)
    total = 0
    for row in range(2, 6):
        bound = np.where(masks[row], factor * means[1], factor * means[0])
        np.testing.assert_array_equal(result.ignore[row], losses[row] > bound)
        total += int(result.ignore[row].sum())
    assert result.ignored_fraction == pytest.approx(total / (4 * size * size))
    assert 0.0 < result.ignored_fraction < 1.0  # a random judge: some pixels above the bound, not all
    with pytest.raises(DataError, match="no real images"):
        pixel_filter.pixel_filter_masks(judge, pairs_df.iloc[2:], size, factor)


def test_class_means_cache_runs_the_real_images_once_and_changes_nothing(pairs_df: pd.DataFrame) -> None:
    """A job's runs share one judge: its real images' class means are computed once, the maps are the same."""
    size, factor = 64, 1.25
    torch.manual_seed(0)
    judge = build_segmenter(FAST_SPEC).eval()
    images_seen: list[int] = []
    judge.register_forward_hook(lambda _m, inputs, _o: images_seen.append(len(inputs[0])))
    cache: dict = {}
    tables = [pairs_df, pairs_df.iloc[[0, 1, 3, 4]]]  # two runs: the same real rows, other synthetic ones
    cached = [pixel_filter.pixel_filter_masks(judge, t, size, factor, batch_size=4, class_means_cache=cache)
              for t in tables]
    assert sum(images_seen) == 2 + 4 + 2  # real rows once, then each table's synthetic rows
    assert len(cache) == 1
    images_seen.clear()
    fresh = [pixel_filter.pixel_filter_masks(judge, t, size, factor, batch_size=4) for t in tables]
    assert sum(images_seen) == (2 + 4) + (2 + 2)
    for a, b in zip(cached, fresh):
        assert a.class_means == b.class_means
        for x, y in zip(a.ignore, b.ignore):
            assert (x is None and y is None) or np.array_equal(x, y)
    # other real rows are another key: computed, not reused
    other = pairs_df.copy()
    other.loc[other.index[2], "variant"] = "real"
    pixel_filter.pixel_filter_masks(judge, other, size, factor, batch_size=4, class_means_cache=cache)
    assert len(cache) == 2
