"""The mask-following measure (hardgen.scoring.mask_following) on hand-made images whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import DataError, write_image, write_mask
from hardgen.scoring.mask_following import (
    COLUMNS,
    dark_corners,
    derangement,
    judge_dice_margins,
    mask_following_from_files,
    mask_following_sentences,
    mask_following_table,
    margin_vs_reference,
    measure_rows,
    real_reference,
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
    assert set(table["measure"]) == {"red_chromaticity"} and set(table["status"]) == {"ok"}
    with pytest.raises(ValueError, match="reference row"):
        mask_following_table((images, masks), {"real": follows})
    with pytest.raises(ValueError, match="1 real image"):
        mask_following_table((images[:1], masks[:1]), {})
    with pytest.raises(ValueError, match="follows: 8 images but 7 masks"):
        mask_following_table((images, masks), {"follows": (images, masks[:7])})


def test_the_training_validation_margin_is_the_tables(discs):
    # a reference computed once, then a few samples against it: the table's margin_vs_real, NaN and why otherwise
    images, masks = discs
    samples = ([_scene(_disc(16, 16, 4)) if k % 2 else images[k].copy() for k in range(4)], masks[:4])
    reference = real_reference((images, masks))
    assert reference.measure == "red_chromaticity" and reference.reason is None and reference.gap > 0
    table = mask_following_table((images, masks), {"samples": samples}).set_index("variant")
    margin, why = margin_vs_reference(reference, *samples)
    assert why is None and margin == pytest.approx(table.loc["samples", "margin_vs_real"])
    assert np.isnan(margin_vs_reference(reference, samples[0][:1], samples[1][:1])[0])
    undefined = real_reference((images[:3], masks[:3]))  # too few real images to tell the gap from chance
    assert "at least 5" in undefined.reason and margin_vs_reference(undefined, *samples)[1] == undefined.reason


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
    with pytest.raises(DataError, match=r"nope\.csv: generated manifest not found"):
        mask_following_from_files(tmp_path / "conditions.csv", tmp_path / "manifest.csv",
                                  {"plain": tmp_path / "nope.csv"}, size=SIZE)
    pd.DataFrame(generated).drop(columns="mask").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv: generated manifest lacks columns \['mask'\]"):
        mask_following_from_files(tmp_path / "conditions.csv", tmp_path / "manifest.csv",
                                  {"plain": tmp_path / "bad.csv"}, size=SIZE)


def test_grayscale_modalities_use_the_grey_level() -> None:
    """Ultrasound-like grey images (three equal channels) with dark lesions: the cue is the grey level, the reference
    gap is negative, a variant that follows its masks scores near 1 and one that ignores them near 0."""
    from hardgen.scoring.mask_following import is_grayscale, mask_following_table

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


# ------------------------------------------------------------------------ an undefined cue and the judges' measure
CENTRES = [(6, 6), (6, 16), (6, 26), (16, 6), (16, 26), (26, 6), (26, 16), (26, 26)]  # never the centre (16, 16)
MUCOSA = np.array((150, 110, 100))


def _matched_scene(mask: np.ndarray) -> np.ndarray:
    """A lesion of the mucosa's colour: a checkerboard of darker and brighter mucosa (a texture, no red tint; its
    red chromaticity is even a little lower, as in real colonoscopy frames whose gap is ~0 or below)."""
    image = np.tile(MUCOSA, (SIZE, SIZE, 1)).astype(np.uint8)
    checker = (np.add.outer(np.arange(SIZE), np.arange(SIZE)) % 2).astype(bool)
    image[mask & checker] = (120, 88, 82)
    image[mask & ~checker] = (180, 132, 122)
    return image


def _texture_judge(images):
    """A stand-in judge that learned the lesions' texture: a pixel whose grey level differs from both horizontal
    neighbours (the checkerboard) is lesion."""
    out = []
    for image in images:
        luma = np.asarray(image, np.float64) @ np.array([0.299, 0.587, 0.114])
        padded = np.pad(luma, ((0, 0), (1, 1)), mode="edge")
        out.append(np.minimum(np.abs(luma - padded[:, :-2]), np.abs(luma - padded[:, 2:])) > 15)
    return out


def _blind_judge(images):
    """A judge that did not learn the masks: the same blob in every image, whatever it shows."""
    return [_disc(16, 16, 4) for _ in images]


@pytest.fixture
def matched() -> tuple[list[np.ndarray], list[np.ndarray]]:
    masks = [_disc(cy, cx, 4) for cy, cx in CENTRES]
    return [_matched_scene(m) for m in masks], masks


def test_colour_matched_lesions_leave_the_cue_undefined_and_the_judge_measures(matched):
    images, masks = matched
    follows = ([im.copy() for im in images], masks)
    ignores = ([_matched_scene(_disc(16, 16, 4)) for _ in masks], masks)  # every lesion in the middle
    table = mask_following_table((images, masks), {"follows": follows, "ignores": ignores},
                                 judges={"cnn": _texture_judge})
    assert tuple(table.columns) == COLUMNS
    assert list(table["measure"]) == ["red_chromaticity"] * 3 + ["judge_dice:cnn"] * 3
    assert list(table["variant"]) == ["real", "follows", "ignores"] * 2
    chroma, judge = (table[table["measure"] == m].set_index("variant") for m in ("red_chromaticity", "judge_dice:cnn"))
    # the cue: written, not raised; own and shuffled kept, no ratio, the reason in words
    assert (chroma["status"] == "undefined").all() and chroma["margin_vs_real"].isna().all()
    assert chroma["own"].notna().all() and chroma["shuffled"].notna().all()
    assert chroma.loc["real", "own"] - chroma.loc["real", "shuffled"] < 0
    assert all(r.startswith("the real images' red chromaticity does not mark their masks beyond chance (real gap -")
               for r in chroma["reason"])
    assert chroma["dark_corners"].notna().all() and judge["dark_corners"].isna().all()  # the cue's rows carry it
    # the judge: the real gap validates it, a set that follows its masks scores ~1, one that ignores them ~0
    assert (judge["status"] == "ok").all() and (judge["reason"] == "").all()
    assert judge.loc["real", "own"] > 0.9 and judge.loc["real", "shuffled"] < 0.1
    assert judge.loc["real", "margin_vs_real"] == 1.0
    assert judge.loc["follows", "margin_vs_real"] == pytest.approx(1.0)
    assert abs(judge.loc["ignores", "margin_vs_real"]) < 0.1


def test_a_judge_that_did_not_learn_the_masks_is_undefined(discs):
    images, masks = discs
    table = mask_following_table((images, masks), {"plain": (images, masks)},
                                 judges={"cnn": _texture_judge, "vit": _blind_judge})
    blind = measure_rows(table, "judge_dice:vit")
    assert (blind["status"] == "undefined").all() and blind["margin_vs_real"].isna().all()
    assert blind.loc["real", "own"] == blind.loc["real", "shuffled"] == 0.0  # the same blob: no Dice, own or not
    assert blind.loc["plain", "reason"] == ("the vit judge did not learn the masks: on its own training images its "
                                            "Dice against their own masks is not above its Dice against shuffled "
                                            "ones beyond chance (real gap 0, 95 % interval [0, 0] over 8 images)")
    # the other measures are unaffected; the cue's rows are the default of measure_rows
    assert measure_rows(table).loc["plain", "margin_vs_real"] == pytest.approx(1.0)
    assert measure_rows(table, "judge_dice:cnn").loc["plain", "status"] == "ok"
    with pytest.raises(ValueError, match="no rows of measure"):
        measure_rows(table, "judge_dice:unet")


def test_judge_dice_margins_pair_each_prediction_with_its_own_and_the_deranged_mask(discs):
    _, masks = discs
    own, shuffled = judge_dice_margins(masks, masks, seed=0)
    assert own == 1.0 and shuffled == 0.0
    half = [m & (np.arange(SIZE)[None, :] < cx) for m, (_, cx) in zip(masks, CENTRES, strict=True)]
    perm = derangement(len(masks), 3)
    own, shuffled = judge_dice_margins([masks[j] for j in perm], masks, seed=3)  # predictions that follow perm
    assert own == 0.0 and shuffled == 1.0
    assert judge_dice_margins(half, masks)[0] == pytest.approx(np.mean(
        [2 * h.sum() / (h.sum() + m.sum()) for h, m in zip(half, masks, strict=True)]))
    with pytest.raises(ValueError, match="prediction 0 has shape"):
        judge_dice_margins([np.zeros((4, 4), bool)] * 2, masks[:2])


def test_one_sample_and_empty_masks_are_undefined_rows_not_errors(discs):
    images, masks = discs
    empty, full = np.zeros((SIZE, SIZE), bool), np.ones((SIZE, SIZE), bool)
    table = mask_following_table((images, masks), {"one": (images[:1], masks[:1]),
                                                   "empty": (images[:3], [empty, full, empty]),
                                                   "same": (images[:3], [masks[0]] * 3)},
                                 judges={"cnn": _texture_judge})
    rows = table.set_index(["measure", "variant"])
    assert rows.loc[("red_chromaticity", "real"), "status"] == "ok"
    assert rows.loc[("red_chromaticity", "one"), "reason"].startswith("a single image: no other image's mask")
    assert rows.loc[("judge_dice:cnn", "one"), "status"] == "undefined"
    assert rows.loc[("red_chromaticity", "empty"), "reason"].startswith("every mask is empty or full")
    # Dice is defined on empty masks: the judge finds the discs the masks do not mark
    assert rows.loc[("judge_dice:cnn", "empty"), "status"] == "ok"
    # one mask for every image: nothing different to shuffle against, for either measure
    for measure in ("red_chromaticity", "judge_dice:cnn"):
        assert rows.loc[(measure, "same"), "reason"] == "every image has the same mask: no other mask to shuffle against"


def test_twins_of_one_condition_are_never_shuffled_against_their_own_mask(discs):
    """generation.per_mask > 1 writes one mask file per sample, so twins share their mask: the shuffled partner must be
    a different mask. The real images, each twice, follow their masks exactly as the real images do (ratio 1)."""
    from hardgen.scoring.mask_following import mask_derangement

    images, masks = discs
    twins_images, twins_masks = images + images, masks + [m.copy() for m in masks]
    perm = mask_derangement(twins_masks, seed=0)
    assert all(not np.array_equal(twins_masks[i], twins_masks[j]) for i, j in enumerate(perm))
    assert np.array_equal(mask_derangement(masks, seed=4), derangement(len(masks), 4))  # distinct masks: as before
    table = mask_following_table((images, masks), {"twins": (twins_images, twins_masks)}).set_index("variant")
    assert table.loc["twins", "margin_vs_real"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1 distinct mask"):
        mask_derangement([masks[0]] * 3)


def test_the_gap_and_its_validation_use_the_same_images():
    """Lesion-free real frames (empty masks) leave some images without an own or a shuffled value: own and shuffled
    are then means over the same images, so the gap is the mean of the paired gaps that the interval validates (a
    gap over two different subsets could even have the other sign)."""
    from hardgen.scoring.mask_following import chroma_contrasts, mask_derangement

    centres = [(6, 6), (6, 16), (6, 26), (16, 6), (16, 26), (26, 6), (26, 16), (26, 26)]
    masks = [_disc(cy, cx, 4) for cy, cx in centres] + [np.zeros((SIZE, SIZE), bool)] * 4
    images = [_scene(m) for m in masks]
    for image in images[8:]:
        image[:, :8] = (230, 60, 60)  # a red band on the lesion-free frames, outside every lesion mask
    table = mask_following_table((images, masks), {}).set_index("variant")
    own = chroma_contrasts(images, masks)
    shuffled = chroma_contrasts(images, [masks[j] for j in mask_derangement(masks, 0)])
    both = np.isfinite(own) & np.isfinite(shuffled)
    assert 0 < both.sum() < len(masks)
    assert table.loc["real", "own"] - table.loc["real", "shuffled"] == pytest.approx((own - shuffled)[both].mean())
    assert table.loc["real", "own"] == pytest.approx(own[both].mean())


def test_a_handful_of_real_images_validates_nothing(discs):
    images, masks = discs
    table = mask_following_table((images[:4], masks[:4]), {"plain": (images, masks)}).set_index("variant")
    assert table.loc["real", "status"] == "undefined"
    assert table.loc["real", "reason"].startswith("only 4 real image(s) with a defined gap")
    assert table.loc["plain", "status"] == "undefined" and np.isnan(table.loc["plain", "margin_vs_real"])


def test_the_sentences_name_the_undefined_measure_and_the_plain_ratio(matched, tmp_path):
    images, masks = matched
    table = mask_following_table((images, masks), {"plain": (images, masks)}, judges={"cnn": _texture_judge})
    sentences = mask_following_sentences(table)
    assert len(sentences) == 2
    assert sentences[0].startswith("Mask following by red chromaticity is undefined for every variant: the real "
                                   "images' red chromaticity does not mark their masks beyond chance (real gap -")
    assert sentences[1].startswith("Mask following by the cnn judge's Dice: the real images validate it")
    assert sentences[1].endswith("the plain samples follow their masks at 1.00 of the real images' gap.")
    table.to_csv(tmp_path / "mask_following.csv", index=False)  # the file reads the same (empty reasons: NaN)
    assert mask_following_sentences(tmp_path / "mask_following.csv") == sentences
    discs_images = [_scene(m) for m in masks]
    ignores = [_scene(_disc(16, 16, 4)) for _ in masks]
    ok = mask_following_sentences(mask_following_table((discs_images, masks), {"plain": (ignores, masks)}))
    assert ok == [(f"Mask following by red chromaticity: the real images validate it (own mask "
                  f"{red_chromaticity_margin(discs_images, masks):.3g} against a shuffled mask "
                  f"{shuffled_margin(discs_images, masks):.3g}); the plain samples follow their masks at 0.00 of "
                  "the real images' gap.")]
    with pytest.raises(DataError, match=r"^mask-following table lacks columns \['status'\]"):
        mask_following_sentences(table.drop(columns="status"))


def test_the_segmenter_predictor_resizes_predicts_and_upsamples(discs):
    """The workflow's judge path on a hand-made segmenter (R − G after ImageNet normalisation, a 1×1 conv): the red
    discs come back at the images' own size."""
    torch = pytest.importorskip("torch")
    from hardgen.scoring.mask_following import segmenter_predictor

    images, masks = discs
    conv = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1))
        conv.bias.fill_(-1.5)
    predictions = segmenter_predictor(conv, size=64, batch_size=3)(images)
    assert len(predictions) == len(images) and all(p.shape == (SIZE, SIZE) and p.dtype == bool for p in predictions)
    own, shuffled = judge_dice_margins(predictions, masks)
    assert own > 0.9 and shuffled < 0.1


def test_a_real_gap_within_chance_does_not_validate_the_cue():
    """A tiny positive red gap that noise alone gives (the real-ultrasound case: grey scans, one with a coloured
    caliper) is no reference: the rows are undefined, with the interval in the reason; the same lesions made redder
    than their background validate it."""
    from hardgen.scoring.mask_following import gap_interval, mask_following_table

    rng = np.random.default_rng(0)
    size, n = 32, 12
    yy, xx = np.mgrid[:size, :size]
    masks = [(yy - rng.integers(10, 22)) ** 2 + (xx - rng.integers(10, 22)) ** 2 < rng.integers(16, 40)
             for _ in range(n)]
    noise = [np.clip(128 + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]
    table = mask_following_table((noise, masks), {"plain": (noise, masks)})
    real = table.set_index("variant").loc["real"]
    assert real["status"] == "undefined" and "beyond chance" in real["reason"] and "95 % interval" in real["reason"]
    red = []
    for image, mask in zip(noise, masks, strict=True):
        image = image.copy()
        image[mask, 0] = np.clip(image[mask, 0].astype(int) + 60, 0, 255)
        red.append(image)
    table = mask_following_table((red, masks), {"plain": (noise, masks)}).set_index("variant")
    assert table.loc["real", "status"] == "ok" and table.loc["real", "margin_vs_real"] == 1.0
    assert abs(table.loc["plain", "margin_vs_real"]) < 0.2  # noise images do not follow the masks
    low, high = gap_interval(np.full(5, 0.1) + np.linspace(-0.01, 0.01, 5))
    assert 0.09 < low < 0.1 < high < 0.11
    assert np.isnan(gap_interval([0.1])).all()


def test_grayscale_tolerates_jpeg_noise_and_a_coloured_marker():
    from hardgen.scoring.mask_following import is_grayscale

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    scan = np.repeat(grey[..., None], 3, axis=-1)
    noisy = np.clip(scan.astype(int) + rng.integers(-3, 4, scan.shape), 0, 255).astype(np.uint8)  # JPEG-like noise
    marked = scan.copy()
    marked[:4, :12] = (255, 255, 0)  # a yellow caliper box: 3 % of the pixels (a real breast-ultrasound scan's)
    assert is_grayscale([scan, noisy, marked])
    colour = scan.copy()
    colour[..., 0] = np.clip(colour[..., 0].astype(int) + 40, 0, 255)  # a red cast over the whole image
    assert not is_grayscale([scan, colour])
    assert is_grayscale([scan] * 9 + [colour])  # one colour-Doppler frame in ten: still a grayscale modality
    assert not is_grayscale([scan] * 8 + [colour] * 2) and not is_grayscale([])
