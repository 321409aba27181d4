"""The fidelity guard (hardgen.scoring.fidelity): Dice and feature separation, calibration, and the guard end to end on an
erased polyp vs a matching one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hardgen.core.io import DataError, write_image, write_mask
from hardgen.evaluation import metrics
from hardgen.scoring import fidelity
from hardgen.scoring.features import BackboneSpec, load_backbone
from hardgen.segmentation.datasets import IMAGENET_MEAN, IMAGENET_STD
from hardgen.segmentation.measures import sample_losses

SIZE = 64


# -------------------------------------------------------------------------------------------------- Dice
def test_dice_edge_cases() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True  # 16 px
    empty = np.zeros_like(mask)
    assert metrics.dice(mask, mask) == 1.0
    assert metrics.dice(empty, empty) == metrics.EMPTY_DICE == 1.0  # both say "no polyp"
    assert metrics.dice(empty, mask) == 0.0  # the polyp is not found
    assert metrics.dice(mask, empty) == 0.0  # a polyp is found where the mask has none
    half = np.zeros_like(mask)
    half[2:6, 2:4] = True  # 8 px inside the mask: 2·8 / (8 + 16)
    assert metrics.dice(half, mask) == pytest.approx(2 / 3)
    shifted = np.roll(mask, 4, axis=1)  # disjoint
    assert metrics.dice(shifted, mask) == 0.0
    batch = metrics.dice(np.stack([mask, empty, half]), np.stack([mask, empty, mask]))
    assert batch.shape == (3,) and batch.tolist() == pytest.approx([1.0, 1.0, 2 / 3])
    with pytest.raises(ValueError, match="bool"):
        metrics.dice(mask.astype(float), mask)
    with pytest.raises(ValueError, match="shapes"):
        metrics.dice(mask, mask[:4])


def test_prediction_dice_thresholds_logits_at_sigmoid_one_half() -> None:
    masks = torch.zeros(2, 1, 4, 4)
    masks[:, :, :2] = 1.0
    logits = torch.full((2, 1, 4, 4), -3.0)
    logits[0, :, :2] = 0.0  # sigmoid exactly 0.5: counts as predicted
    logits[1, :, :1] = 5.0  # half the polyp
    assert metrics.prediction_dice(logits, masks).tolist() == pytest.approx([1.0, 2 * 4 / (4 + 8)])
    with pytest.raises(ValueError, match="differ"):
        metrics.prediction_dice(logits, masks[:, :, :2])


# ------------------------------------------------------------------------------------------ separation
def test_mask_separation_is_one_minus_cosine_of_inside_and_outside_means() -> None:
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])
    features = b.view(1, 3, 1, 1).repeat(3, 1, 4, 4)
    features[:, :, :2, :2] = a.view(1, 3, 1, 1)  # the top-left feature cells carry a, the rest b
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, :8, :8] = True  # exactly the a cells
    masks[1] = True  # no background: undefined
    # masks[2] stays empty: no foreground, undefined
    separation = fidelity.mask_separation(features, masks)
    assert separation[0].item() == pytest.approx(1 - 1 / np.sqrt(2))
    assert torch.isnan(separation[1]) and torch.isnan(separation[2])
    # the same features inside and outside: no separation at all
    same = fidelity.mask_separation(b.view(1, 3, 1, 1).repeat(1, 1, 4, 4), masks[:1])
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # a mask covering half of a cell weighs that cell by its covered area: inside = mean of a, a, ½-weighted b
    half = torch.zeros(1, 16, 16, dtype=torch.bool)
    half[0, :8, :10] = True  # cells (0..1, 0..1) fully, cells (0..1, 2) half
    f_in = (4 * a + 2 * 0.5 * b) / 5
    f_out = (10 * b + 2 * 0.5 * b) / 11
    expected = 1 - torch.nn.functional.cosine_similarity(f_in, f_out, dim=0).item()
    assert fidelity.mask_separation(features[:1], half).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="expected"):
        fidelity.mask_separation(features[0], masks)


def test_calibration_maps_the_median_real_pair_to_one() -> None:
    reference = np.array([0.02, 0.04, 0.05, 0.06, 0.08, np.nan])  # median of the defined ones: 0.05
    calibrated = fidelity.calibrate_separation(reference, reference)
    assert np.isnan(calibrated[-1])
    assert calibrated[:5].tolist() == pytest.approx([0.4, 0.8, 1.0, 1.0, 1.0])  # at and above the median: 1
    raw = np.array([0.0, 0.01, 0.025, 0.5, np.nan])
    assert fidelity.calibrate_separation(raw, reference).tolist()[:4] == pytest.approx([0.0, 0.2, 0.5, 1.0])
    assert fidelity.calibrate_separation([-0.01], reference)[0] == 0.0  # clipped to [0, 1]
    with pytest.raises(DataError, match="no defined separation"):
        fidelity.calibrate_separation(raw, [np.nan, np.nan])
    with pytest.raises(DataError, match=r"median separation 0 <= 0.*fidelity_backbone"):
        fidelity.calibrate_separation(raw, [0.0, 0.0, 1.0])


def test_combine_and_passes() -> None:
    combined = fidelity.combine([1.0, 0.2, 0.6], [0.8, 0.0, np.nan])
    assert combined.tolist() == pytest.approx([0.9, 0.1, 0.6])  # undefined separation: the Dice alone
    assert fidelity.passes(combined, 0.6).tolist() == [True, False, True]  # inclusive threshold
    assert fidelity.passes(combined, 0.0).all()
    with pytest.raises(ValueError, match=r"filter\.min_fidelity"):
        fidelity.passes(combined, 1.5)
    with pytest.raises(DataError, match="finite fidelity"):
        fidelity.passes([0.5, np.nan], 0.5)
    with pytest.raises(ValueError, match="finite Dice"):
        fidelity.combine([np.nan], [0.5])


def test_spatial_features_take_the_deepest_map_with_enough_cells() -> None:
    small = load_backbone(BackboneSpec(name="resnet18", input_size=64))
    images = torch.rand(2, 3, 48, 48)
    # resnet18 at 64 px: maps of 32, 16, 8, 4 and 2 cells; the last 2 × 2 mixes everything, 4 × 4 is taken
    assert tuple(fidelity.spatial_features(small, images).shape) == (2, 256, 4, 4)
    large = load_backbone(BackboneSpec(name="resnet18", input_size=128))
    assert tuple(fidelity.spatial_features(large, images).shape) == (2, 512, 4, 4)  # the last map
    with pytest.raises(ValueError, match=r"filter\.fidelity_backbone.*input_size"):
        fidelity.spatial_features(small, images, min_grid=64)


# --------------------------------------------------------------------------- the guard, end to end
def scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A colonoscopy-like 64 px scene: muted pink mucosa with a red, shaded polyp; returns (image, the same image
    with the polyp inpainted with the surrounding background, mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    background = np.stack([170 + 20 * np.sin(xx / 7 + seed), 125 + 10 * np.cos(yy / 9),
                           115 + 10 * np.sin((xx + yy) / 11)], -1) + rng.normal(0, 5, (SIZE, SIZE, 3))
    radius = int(rng.integers(10, 16))
    cy, cx = rng.integers(radius + 2, SIZE - radius - 2, 2)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    shade = 1 - 0.2 * np.clip(((yy - cy + radius / 2) ** 2 + (xx - cx + radius / 2) ** 2) / radius**2, 0, 1)
    polyp = np.stack([225 * shade, 60 * shade, 60 * shade], -1) + rng.normal(0, 4, (SIZE, SIZE, 3))
    image = np.where(mask[..., None], polyp, background).clip(0, 255).astype(np.uint8)
    hole = cv2.dilate(mask.astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    erased = cv2.inpaint(image, hole, 7, cv2.INPAINT_TELEA)
    return image, erased, mask


class RednessSegmenter(nn.Module):
    """A real (if simple) segmenter: a 1 × 1 convolution on ImageNet-normalised input whose logit is
    ``k · (R − G − offset)`` in 0-255 pixel units, i.e. "this pixel is much redder than green"."""

    def __init__(self, offset: float, k: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 0, 0] = 255 * IMAGENET_STD[0] * k
            self.conv.weight[0, 1, 0, 0] = -255 * IMAGENET_STD[1] * k
            self.conv.bias.fill_(k * (255 * (IMAGENET_MEAN[0] - IMAGENET_MEAN[1]) - offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture(scope="module")
def guard_tree(tmp_path_factory) -> dict[str, object]:
    """8 real training scenes (the calibration), and a generated 'hard' variant of two samples drawn from a new
    scene: 'match' shows its polyp, 'erased' is the same image with the polyp inpainted (same mask)."""
    root = tmp_path_factory.mktemp("guard")
    rows = []
    for i in range(8):
        image, _, mask = scene(i)
        write_image(root / f"real/{i}.png", image)
        write_mask(root / f"real/m{i}.png", mask)
        rows.append({"id": f"r{i}", "split": "train", "image": str(root / f"real/{i}.png"),
                     "mask": str(root / f"real/m{i}.png"), "fg_fraction": float(mask.mean())})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    image, erased, mask = scene(100)
    generated = []
    for sid, picture in (("match", image), ("erased", erased)):
        write_image(root / f"gen/{sid}.png", picture)
        write_mask(root / f"gen/m{sid}.png", mask)
        generated.append({"sample_id": sid, "image": str(root / f"gen/{sid}.png"),
                          "mask": str(root / f"gen/m{sid}.png"), "condition": "", "variant": "hard"})
    generated_csv = root / "generated.csv"
    pd.DataFrame(generated).to_csv(generated_csv, index=False)
    # two real-only judge runs (the guard averages every arch's judge), graded through sample_losses
    losses = {}
    for name, offset in (("judge/cnn/seed-0", 90.0), ("judge/transformer/seed-0", 70.0)):
        table = sample_losses(RednessSegmenter(offset), pd.DataFrame(generated), size=SIZE).assign(variant="hard")
        losses[name] = root / f"{name.replace('/', '_')}.csv"
        table.to_csv(losses[name], index=False)
    backbone = load_backbone(BackboneSpec(name="convnext_atto", input_size=SIZE))  # the demo's held-out family
    reference_csv = root / "fidelity" / "real.csv"
    reference = fidelity.build_reference(manifest, backbone, reference_csv, resolution=SIZE)
    out = root / "fidelity" / "hard.csv"
    table = fidelity.build_fidelity(generated_csv, losses, reference_csv, backbone, out, resolution=SIZE)
    return {"table": table, "reference": reference, "out": out, "losses": losses, "generated": generated}


def test_the_guard_rejects_an_erased_polyp_and_keeps_a_matching_one(guard_tree) -> None:
    table = guard_tree["table"].set_index("sample_id")
    assert list(guard_tree["table"].columns) == fidelity.FIDELITY_COLUMNS
    assert (table["judges"] == "judge/cnn/seed-0;judge/transformer/seed-0").all()
    match, erased = table.loc["match"], table.loc["erased"]
    # the real-only segmenters find the polyp in the matching image and nothing in the erased one
    assert match["fidelity_dice"] > 0.8 and erased["fidelity_dice"] < 0.1
    # the held-out backbone tells polyp from mucosa in the matching image like in a real one, not in the erased one
    assert match["fidelity_separation"] > 0.6 and erased["fidelity_separation"] < 0.4
    assert erased["separation"] < match["separation"]
    # the guard at the demo's threshold: keep the match, reject the erased polyp
    kept = fidelity.passes(table["fidelity"], 0.5)
    assert dict(zip(table.index, kept)) == {"match": True, "erased": False}
    # the file is the table, written atomically
    written = pd.read_csv(guard_tree["out"], dtype={"sample_id": str})
    pd.testing.assert_frame_equal(written, guard_tree["table"], check_dtype=False)


def test_the_reference_is_calibrated_to_real_images(guard_tree) -> None:
    reference = guard_tree["reference"]
    assert list(reference.columns) == fidelity.REFERENCE_COLUMNS and len(reference) == 8
    assert np.isfinite(reference["separation"]).all() and (reference["separation"] > 0).all()
    calibrated = fidelity.calibrate_separation(reference["separation"], reference["separation"])
    assert np.median(calibrated) > 0.95 and (calibrated > 0.5).all()  # typical real pairs sit near 1


def test_judge_dice_needs_every_sample_from_every_segmenter(guard_tree, tmp_path: Path) -> None:
    losses = guard_tree["losses"]
    tables = {name: pd.read_csv(path, dtype={"sample_id": str}) for name, path in losses.items()}
    dice = fidelity.guard_dice(tables, "hard", ["match", "erased"]).set_index("sample_id")
    per = pd.concat([t.set_index("sample_id")["dice"] for t in tables.values()], axis=1)
    assert dice["fidelity_dice"].to_numpy() == pytest.approx(per.loc[["match", "erased"]].mean(axis=1).to_numpy())
    short = dict(tables, **{"judge/cnn/seed-0": tables["judge/cnn/seed-0"].iloc[:1]})
    with pytest.raises(DataError, match=r"no Dice for 1 hard samples.*erased"):
        fidelity.guard_dice(short, "hard", ["match", "erased"])
    with pytest.raises(DataError, match=r"lacks columns \['dice'\].*segmenter_loss"):
        fidelity.guard_dice({"judge/x/seed-0": tables["judge/cnn/seed-0"].drop(columns="dice")}, "hard", ["match"])
    with pytest.raises(DataError, match="no real-only judge"):
        fidelity.guard_dice({}, "hard", ["match"])


@pytest.mark.parametrize("benchmark_run", ["cnn/seed-0", "results/eval/cnn/seed-0/sample_loss.csv",
                                           "segment/cnn/real/ratio-0/seed-0", "results/segment/cnn/judge/seed-0.csv"])
def test_the_guard_refuses_benchmark_runs_as_judges(guard_tree, benchmark_run: str) -> None:
    """The guard's Dice comes from separate real-only judge runs, never from the benchmark's own runs (whose
    grades would choose hard_faithful's pool by the runs it is compared against)."""
    assert fidelity.judge_run_name("results/judge/cnn/seed-3/sample_loss.csv") == "judge/cnn/seed-3"
    assert fidelity.judge_run_name("judge/transformer/seed-0") == "judge/transformer/seed-0"
    table = pd.read_csv(guard_tree["losses"]["judge/cnn/seed-0"], dtype={"sample_id": str})
    with pytest.raises(DataError, match="not a real-only judge run"):
        fidelity.guard_dice({benchmark_run: table}, "hard", ["match"])
    with pytest.raises(DataError, match="not a real-only judge run"):
        fidelity.judge_run_name(benchmark_run)


def test_scores_join_and_the_summary_count_rejections(guard_tree) -> None:
    graded = guard_tree["table"]
    scores = pd.DataFrame({"sample_id": ["match", "erased"] * 2, "variant": "hard",
                           "backbone": ["cnn", "cnn", "vit", "vit"], "distance": 1.0, "z": 0.0})
    joined = fidelity.join_fidelity(scores, graded)
    assert list(joined.columns)[-3:] == fidelity.SCORE_FIDELITY_COLUMNS and len(joined) == 4
    with pytest.raises(DataError, match=r"no fidelity for scored samples \['other'\]"):
        fidelity.join_fidelity(pd.concat([scores, scores.iloc[:1].assign(sample_id="other")]), graded)
    real = pd.DataFrame({"sample_id": ["r0"], "variant": "real", "backbone": "cnn", "distance": 1.0, "z": 0.0})
    judges = fidelity.guard_judges({"hard": graded})
    assert judges == {"hard": "judge/cnn/seed-0;judge/transformer/seed-0"}
    summary = fidelity.fidelity_summary(pd.concat([real, joined]), min_fidelity=0.5, judges=judges)
    assert list(summary.columns) == fidelity.SUMMARY_COLUMNS
    assert summary["judges"].tolist() == ["judge/cnn/seed-0;judge/transformer/seed-0"]
    with pytest.raises(DataError, match="no judge runs recorded for variant 'hard'"):
        fidelity.fidelity_summary(pd.concat([real, joined]), 0.5, judges={})
    with pytest.raises(DataError, match="not a real-only judge run"):
        fidelity.fidelity_summary(pd.concat([real, joined]), 0.5, judges={"hard": "judge/cnn/seed-0;cnn/seed-0"})
    row = summary.set_index("variant").loc["hard"]  # real is the calibration: not graded
    assert len(summary) == 1 and row["n"] == 2 and row["rejected"] == 1  # each sample once, not per backbone
    assert row["mean_fidelity"] == pytest.approx(graded["fidelity"].mean())
    with pytest.raises(DataError, match="lack fidelity columns"):
        fidelity.fidelity_summary(scores, 0.5, judges)


def test_the_score_job_grades_and_scores_with_one_backbone_load(guard_tree, tmp_path: Path, monkeypatch) -> None:
    # rule score runs the guard and the scores in one job (hardgen.scoring.score.score_with_fidelity): the held-out backbone
    # is loaded once, and every file equals what the former separate jobs wrote (fidelity_reference, fidelity, score)
    from hardgen.scoring import score
    from hardgen.scoring.features import compute_prototype

    root = Path(guard_tree["out"]).parents[1]
    manifest, generated_csv = root / "manifest.csv", root / "generated.csv"
    spec = BackboneSpec(name="convnext_atto", input_size=SIZE)
    prototype = tmp_path / "heldout.safetensors"
    compute_prototype(pd.read_csv(manifest), spec, prototype, pad=4, resolution=SIZE)
    loads = []
    monkeypatch.setattr(score, "load_backbone", lambda *a, **k: loads.append(a) or load_backbone(*a, **k))
    setup = score.ScoringSetup({"heldout": spec}, {"heldout": prototype}, "heldout", pad=4, resolution=SIZE)
    real_scores, reference = score.score_with_fidelity(
        setup, score.ScoredSet(manifest, "real", out_path=tmp_path / "real.csv",
                               fidelity_out=tmp_path / "fidelity_real.csv"))
    assert len(loads) == 1 and "fidelity" not in real_scores.columns
    pd.testing.assert_frame_equal(reference, guard_tree["reference"])
    scores, graded = score.score_with_fidelity(
        setup, score.ScoredSet(generated_csv, "hard", out_path=tmp_path / "hard.csv",
                               fidelity_out=tmp_path / "fidelity_hard.csv", sample_loss_csvs=guard_tree["losses"],
                               reference_csv=tmp_path / "fidelity_real.csv"))
    assert len(loads) == 2  # one per job
    pd.testing.assert_frame_equal(graded, guard_tree["table"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fidelity_hard.csv"), pd.read_csv(guard_tree["out"]))
    separate = score.score_variant(generated_csv, {"heldout": spec}, {"heldout": prototype}, "hard",
                                   tmp_path / "separate.csv", pad=4, resolution=SIZE, fidelity_path=guard_tree["out"])
    pd.testing.assert_frame_equal(scores, separate)
    assert list(scores.columns)[-3:] == fidelity.SCORE_FIDELITY_COLUMNS
    with pytest.raises(DataError, match=r"nope\.csv: fidelity table not found"):
        score.score_variant(generated_csv, {"heldout": spec}, {"heldout": prototype}, "hard", tmp_path / "x.csv",
                            pad=4, resolution=SIZE, fidelity_path=tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="filter.fidelity_backbone: 'dino'"):
        score.score_with_fidelity(dataclasses.replace(setup, fidelity_key="dino"),
                                  score.ScoredSet(manifest, "real", out_path=tmp_path / "x.csv",
                                                  fidelity_out=tmp_path / "y.csv"))
    with pytest.raises(ValueError, match="sample losses"):
        score.score_with_fidelity(setup, score.ScoredSet(generated_csv, "hard", out_path=tmp_path / "x.csv",
                                                         fidelity_out=tmp_path / "y.csv"))
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()
