"""The mask-following measure (hardgen.mask_following) on hand-made images whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen.io import write_image, write_mask
from hardgen.mask_following import (
    COLUMNS,
    dark_corners,
    derangement,
    mask_following_from_files,
    mask_following_table,
    red_chromaticity,
    red_chromaticity_margin,
    shuffled_margin,
)

SIZE = 32


def _disc(cy: int, cx: int, r: int = 5) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene(mask: np.ndarray, corners: bool = False) -> np.ndarray:
    """Grey-pink mucosa, a red disc where ``mask`` is; optionally the endoscope's black corners."""
    image = np.full((SIZE, SIZE, 3), (150, 110, 100), np.uint8)
    image[mask] = (200, 60, 60)
    if corners:
        yy, xx = np.mgrid[:SIZE, :SIZE]
        for cy, cx in ((0, 0), (0, SIZE - 1), (SIZE - 1, 0), (SIZE - 1, SIZE - 1)):
            image[np.abs(yy - cy) + np.abs(xx - cx) < 6] = (3, 2, 2)
    return image


@pytest.fixture
def discs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Eight red discs at non-overlapping places (so another image's mask never covers this one's disc)."""
    centres = [(6, 6), (6, 16), (6, 26), (16, 6), (16, 26), (26, 6), (26, 16), (26, 26)]
    masks = [_disc(cy, cx, 4) for cy, cx in centres]
    return [_scene(m) for m in masks], masks


def test_red_chromaticity_is_r_over_sum_and_neutral_on_black():
    image = np.array([[[200, 100, 100], [0, 0, 0], [10, 10, 10]]], np.uint8)
    assert np.allclose(red_chromaticity(image), [[0.5, 1 / 3, 1 / 3]])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        red_chromaticity(np.zeros((4, 4)))


def test_a_red_disc_in_its_own_mask_has_a_margin_and_a_shuffled_mask_none(discs):
    images, masks = discs
    chroma_in, chroma_out = 200 / 320, 150 / 360
    own = red_chromaticity_margin(images, masks)
    assert own == pytest.approx(chroma_in - chroma_out)
    # another disc's mask covers only grey mucosa; the image's own disc now lies outside, pulling the outside
    # up by its share of the outside (49 of 975 pixels): shuffled = -own * 49 / 975
    shuffled = shuffled_margin(images, masks, seed=0)
    assert shuffled == pytest.approx(-own * masks[0].sum() / (~masks[0]).sum())
    assert shuffled_margin(images, masks, seed=0) == shuffled  # seeded


def test_the_derangement_never_keeps_an_image_with_its_own_mask():
    for n in (2, 3, 24):
        for seed in range(20):
            perm = derangement(n, seed)
            assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    assert not np.array_equal(derangement(24, 0), derangement(24, 1))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_black_corners_are_counted_and_a_dark_centre_is_not():
    mask = _disc(16, 16)
    with_corners, without = _scene(mask, corners=True), _scene(mask)
    dark_centre = without.copy()
    dark_centre[8:24, 8:24] = 0
    assert dark_corners([with_corners, with_corners, without, dark_centre]) == 0.5
    three = with_corners.copy()
    three[-2:, -2:] = (150, 110, 100)  # one bright corner: not the endoscope's border
    assert dark_corners([three]) == 0.0


def test_empty_masks_are_left_out_and_all_empty_is_an_error(discs):
    images, masks = discs
    empty = np.zeros((SIZE, SIZE), bool)
    assert red_chromaticity_margin([*images, images[0]], [*masks, empty]) == red_chromaticity_margin(images, masks)
    with pytest.raises(ValueError, match="empty or full"):
        red_chromaticity_margin(images[:2], [empty, ~empty])
    with pytest.raises(ValueError, match="shape"):
        red_chromaticity_margin(images[:1], [np.zeros((8, 8), bool)])
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        red_chromaticity_margin(images[:2], masks[:1])


def test_the_table_scales_each_variant_by_the_real_margin(discs):
    images, masks = discs
    follows = ([img.copy() for img in images], masks)
    ignores = ([_scene(_disc(16, 16, 4)) for _ in masks], masks)  # every sample's disc in the same place
    table = mask_following_table((images, masks), {"follows": follows, "ignores": ignores})
    assert tuple(table.columns) == COLUMNS and list(table["variant"]) == ["real", "follows", "ignores"]
    rows = table.set_index("variant")
    assert rows.loc["real", "margin_vs_real"] == 1.0 and rows.loc["follows", "margin_vs_real"] == pytest.approx(1.0)
    assert abs(rows.loc["ignores", "margin_vs_real"]) < 0.1
    assert (table["dark_corners"] == 0).all()
    flat = ([np.full((SIZE, SIZE, 3), 120, np.uint8)] * 3, masks[:3])
    with pytest.raises(ValueError, match="real images' own-vs-shuffled margin"):
        mask_following_table(flat, {})
    with pytest.raises(ValueError, match="reference row"):
        mask_following_table((images, masks), {"real": follows})


def test_the_table_from_the_workflow_files(tmp_path, discs):
    images, masks = discs
    rows, manifest, generated = [], [], []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)  # real images at their raw size (64 px)
        write_image(tmp_path / f"real/{i}.png", big)
        write_mask(tmp_path / f"cond/{i}.png", mask)
        write_image(tmp_path / f"gen/{i}.png", images[(i + 1) % len(images)])  # a generator that ignores masks
        manifest.append({"id": f"s{i}", "image": str(tmp_path / f"real/{i}.png")})
        rows.append({"sample_id": f"s{i}", "source_id": f"s{i}", "kind": "real", "condition": "c.png",
                     "mask": str(tmp_path / f"cond/{i}.png")})
        generated.append({"sample_id": f"s{i}", "image": str(tmp_path / f"gen/{i}.png"),
                          "mask": str(tmp_path / f"cond/{i}.png")})
    rows.append({"sample_id": "layout", "source_id": "elsewhere", "kind": "layout", "condition": "c.png",
                 "mask": str(tmp_path / "cond/0.png")})  # no real image: left out of the real row
    pd.DataFrame(rows).to_csv(tmp_path / "conditions.csv", index=False)
    pd.DataFrame(manifest).to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame(generated).to_csv(tmp_path / "plain.csv", index=False)
    table = mask_following_from_files(tmp_path / "conditions.csv", tmp_path / "manifest.csv",
                                      {"plain": tmp_path / "plain.csv"}, size=SIZE).set_index("variant")
    assert table.loc["real", "own"] == pytest.approx(red_chromaticity_margin(images, masks), abs=1e-3)
    assert table.loc["plain", "margin_vs_real"] < 0.1


def test_grayscale_modalities_use_the_grey_level() -> None:
    """Ultrasound-like grey images (three equal channels) with dark lesions: the cue is the grey level, the reference
    gap is negative, a variant that follows its masks scores near 1 and one that ignores them near 0."""
    from hardgen.mask_following import is_grayscale, mask_following_table

    rng = np.random.default_rng(0)
    masks, images = [], []
    for i in range(8):
        mask = np.zeros((32, 32), bool)
        mask[4 + i:14 + i, 6 + 2 * i:16 + 2 * i] = True
        grey = np.where(mask, 40.0, 150.0) + rng.normal(0, 5, (32, 32))
        images.append(np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2))
        masks.append(mask)
    assert is_grayscale(images)
    uniform = [np.full_like(im, 120) for im in images]
    table = mask_following_table((images, masks), {"follows": (images, masks), "ignores": (uniform, masks)})
    table = table.set_index("variant")
    assert table.loc["real", "own"] < 0  # dark lesions
    assert table.loc["real", "margin_vs_real"] == pytest.approx(1.0)
    assert table.loc["follows", "margin_vs_real"] == pytest.approx(1.0)
    assert table.loc["ignores", "margin_vs_real"] == pytest.approx(0.0)
