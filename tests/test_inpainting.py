"""Lesions in real frames (issue 33): the composite keeps the frame outside the region, relocation stays in the field
of view and off the frame's own lesion with the union as label, the known-region blending on the tiny model, an
inpainting shard end to end, and the measures of results/tables/inpainting.csv."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import read_mask, read_rgb, write_image, write_mask
from hardgen.data.placement import (
    Frame,
    area_range,
    assign_placements,
    dilate_mask,
    field_of_view,
    lesion_region,
    plan_scene,
)
from hardgen.models.inpainting import composite, feathered_alpha

R = 32


def octagon_frame(seed: int, size: int = R, lesion: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(RGB uint8 frame, its lesion, its field of view): textured mucosa inside an octagon, black corners outside,
    a dark lumen in the middle (dark but inside the field of view) and a red disc (the lesion) at a seeded spot."""
    rng = np.random.default_rng(seed)
    cut = size // 4
    points = np.array([(cut, 0), (size - 1 - cut, 0), (size - 1, cut), (size - 1, size - 1 - cut),
                       (size - 1 - cut, size - 1), (cut, size - 1), (0, size - 1 - cut), (0, cut)], np.int32)
    fov = np.zeros((size, size), np.uint8)
    cv2.fillPoly(fov, [points], 1)
    fov = fov.astype(bool)
    image = np.clip(rng.normal((190, 100, 80), 12, (size, size, 3)), 0, 255)
    yy, xx = np.mgrid[:size, :size]
    image[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 10) ** 2] = (8, 4, 4)  # the lumen: dark, inside
    mask = np.zeros((size, size), bool)
    if lesion:
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2) & fov
        image[mask] = (220, 60, 50)
    image[~fov] = rng.integers(0, 6)
    return image.round().astype(np.uint8), mask, fov


# ---------------------------------------------------------------------------------------------- pixels
def test_the_composite_is_the_frame_outside_the_region_and_the_sample_on_the_lesion():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (R, R, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (R, R, 3), dtype=np.uint8)
    lesion = np.zeros((R, R), bool)
    lesion[10:18, 12:20] = True
    region = dilate_mask(lesion, 4)
    for feather in (0, 2, 4):
        alpha = feathered_alpha(region, lesion, feather)
        out = composite(generated, frame, alpha)
        assert np.array_equal(out[~region], frame[~region])  # byte for byte
        assert np.array_equal(out[lesion], generated[lesion])
        assert alpha[~region].max() == 0 and alpha[lesion].min() == 1 and 0 <= alpha.min() <= alpha.max() <= 1
    # the ramp: a pixel d px inside the border weighs min(1, d / feather)
    ramp = feathered_alpha(region, lesion, 4)
    edge = region & ~cv2.erode(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert np.all(ramp[edge] <= 0.5) and np.all(ramp[edge] > 0)
    with pytest.raises(ValueError, match="feather must be >= 0"):
        feathered_alpha(region, lesion, -1)


# ---------------------------------------------------------------------------------------------- placement
def test_the_field_of_view_excludes_the_black_corners_not_a_dark_lumen():
    image, _, fov = octagon_frame(0)
    found = field_of_view(image)
    assert np.array_equal(found, fov)  # the lumen (dark, not touching the border) stays inside
    assert not found[0, 0] and not found[-1, -1]


def test_relocation_stays_in_the_field_of_view_off_the_frames_lesion_with_the_union_label():
    frames = []
    for i in range(6):
        image, lesion, fov = octagon_frame(i)
        frames.append(Frame(f"c{i}", f"r{i}", image, lesion))
        assert np.array_equal(frames[-1].fov, fov)
    areas = area_range([f.lesion for f in frames])
    backgrounds = [Frame("bg", "bg", octagon_frame(9, lesion=False)[0], np.zeros((R, R), bool))]
    by_id = {f.id: f for f in [*frames, *backgrounds]}
    for seed in range(40):
        own = frames[seed % 6]
        for placement in ("relocated", "frames"):
            scene = plan_scene(placement, own.lesion, own, frames, backgrounds, seed, 2, areas, f"s{seed}")
            target = by_id[scene.frame_id]
            assert scene.placement == placement and (placement == "frames") == (target.id == "bg")
            assert target.source != own.source  # never its own frame
            assert np.array_equal(scene.frame, target.image)
            assert not (scene.region & dilate_mask(target.lesion, 1)).any()  # off the frame's own lesion
            assert not (scene.region & ~target.fov).any()  # never in the black corners
            assert np.array_equal(scene.label, scene.lesion | target.lesion)  # the union
            assert areas[0] <= scene.lesion.sum() <= areas[1]  # a real lesion's scale
            assert np.array_equal(scene.region, lesion_region(scene.lesion, target.fov, 2))
    scene = plan_scene("in_place", frames[0].lesion, frames[0], frames, [], 0, 2, areas)
    assert scene.frame_id == "c0" and np.array_equal(scene.label, frames[0].lesion)
    # a lesion too large for the room any other frame leaves is drawn in place (so recorded); a layout cannot be
    huge = np.zeros((R, R), bool)
    huge[4:28, 4:28] = True
    fallback = plan_scene("relocated", huge, frames[0], frames, [], 0, 2, (500, 600), "s")
    assert fallback.placement == "in_place" and fallback.frame_id == "c0"
    with pytest.raises(ValueError, match="'s': its mask fits no relocated frame.*a layout"):
        plan_scene("relocated", huge, None, frames, [], 0, 2, (500, 600), "s")
    # the same seed, the same scene (inpaint and hard_inpaint draw into the same frames)
    one, two = (plan_scene("relocated", frames[1].lesion, frames[1], frames, [], 7, 2, areas) for _ in range(2))
    assert one.frame_id == two.frame_id and np.array_equal(one.lesion, two.lesion)


def test_placements_are_taken_in_turn_and_a_layout_passes_in_place_on():
    ids = [f"s{i}" for i in range(6)]
    assert list(assign_placements(ids, [], ["in_place", "relocated", "frames"]).values()) == [
        "in_place", "relocated", "frames"] * 2
    assert assign_placements(ids, ["s3"], ["in_place", "relocated"])["s2"] == "in_place"
    assert assign_placements(["s0"], ["s0"], ["in_place", "frames"]) == {"s0": "frames"}
    with pytest.raises(ValueError, match="only in_place"):
        assign_placements(ids, ["s1"], ["in_place"])
    with pytest.raises(ValueError, match="choose from"):
        assign_placements(ids, [], ["beside"])


# ---------------------------------------------------------------------------------------------- the tiny model
def test_blending_keeps_the_known_latents_and_the_frame_outside_the_region(tiny_model):
    import torch

    from hardgen.generator.generate import load_generation_pipeline
    from hardgen.models.inpainting import (
        blending_callback,
        frame_latents,
        inpaint_renderer,
        latent_mask,
    )
    from hardgen.models.sampling import Sampling

    base, lora = tiny_model
    pipe = load_generation_pipeline(base, lora, device="cpu")
    sampling = Sampling("a polyp", 16, 3)
    frames, lesions, regions, conditions = [], [], [], []
    for i in range(2):
        image, lesion, fov = octagon_frame(i, size=16)
        lesions.append(lesion)
        regions.append(lesion_region(lesion, fov, 1))
        frames.append(image)
        conditions.append(np.repeat((lesion * 255).astype(np.uint8)[..., None], 3, axis=2))
    # one blending step: outside the latent mask, the known latents noised to the next timestep
    known = frame_latents(pipe.vae, frames, pipe.device, torch.float32)
    noise = torch.randn(known.shape, generator=torch.Generator().manual_seed(0))
    mask = latent_mask(regions, known.shape[-2:], pipe.device, torch.float32)
    assert 0 < mask.sum() < mask.numel()
    pipe.scheduler.set_timesteps(3)
    latents = torch.randn(known.shape, generator=torch.Generator().manual_seed(1))
    out = blending_callback(known, noise, mask)(pipe, 0, pipe.scheduler.timesteps[0], {"latents": latents})["latents"]
    expected = pipe.scheduler.add_noise(known, noise, pipe.scheduler.timesteps[1:2])
    assert torch.equal(out[mask.expand_as(out) == 0], expected[mask.expand_as(out) == 0])
    assert torch.equal(out[mask.expand_as(out) == 1], latents[mask.expand_as(out) == 1])
    last = blending_callback(known, noise, mask)(pipe, 2, pipe.scheduler.timesteps[2], {"latents": latents})
    assert torch.equal(last["latents"][mask.expand_as(out) == 0], known[mask.expand_as(out) == 0])
    # a full render: the frame outside each region, byte for byte; the lesion drawn
    render = inpaint_renderer(pipe, sampling, feather=1)
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    images = render(conditions, generators, frames, regions, lesions)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    for image, frame, region, lesion in zip(images, frames, regions, lesions):
        assert np.array_equal(image[~region], frame[~region])
        assert not np.array_equal(image[lesion], frame[lesion])


def inpainting_data(root: Path, n: int = 4, size: int = 24) -> tuple[Path, Path, Path]:
    """(conditions CSV, data manifest CSV, background folder) of ``n`` octagon frames with their lesions (the
    conditions at ``size`` px, as make_conditions writes them) and two lesion-free frames."""
    conditions, manifest = [], []
    for i in range(n):
        image, lesion, _ = octagon_frame(i, size=size)
        write_image(root / "data" / f"r{i}.png", image)
        write_mask(root / "conditions" / "masks" / f"c{i}.png", lesion)
        write_image(root / "conditions" / "images" / f"c{i}.png",
                    np.repeat((lesion * 255).astype(np.uint8)[..., None], 3, axis=2))
        conditions.append({"sample_id": f"c{i}", "source_id": f"r{i}", "kind": "real",
                           "condition": str(root / "conditions" / "images" / f"c{i}.png"),
                           "mask": str(root / "conditions" / "masks" / f"c{i}.png")})
        manifest.append({"id": f"r{i}", "image": str(root / "data" / f"r{i}.png"), "split": "train"})
    for i in range(2):
        write_image(root / "backgrounds" / f"bg{i}.png", octagon_frame(10 + i, size=size, lesion=False)[0])
    pd.DataFrame(conditions).to_csv(root / "conditions.csv", index=False)
    pd.DataFrame(manifest).to_csv(root / "manifest.csv", index=False)
    return root / "conditions.csv", root / "manifest.csv", root / "backgrounds"


def test_an_inpainting_shard_records_its_scenes_and_resumes(tiny_model, tmp_path, monkeypatch):
    import hardgen.generator.generate as generate
    from hardgen.generator.inpaint import InpaintSettings

    base, lora = tiny_model
    conditions, manifest, backgrounds = inpainting_data(tmp_path)
    settings = generate.GenerationSettings(generate.Sampling("a polyp", 24, 2), seed=3, device="cpu", batch_size=2,
                                           inpaint=InpaintSettings(2, 1, ("in_place", "relocated", "frames")))

    def run() -> pd.DataFrame:
        return generate.generate_shard(generate.GenerationShard(base, lora, conditions, 0, 1, tmp_path / "out",
                                                                "inpaint", manifest=manifest, backgrounds=backgrounds),
                                       settings)

    table = run()
    assert list(table.columns) == [*generate.MANIFEST_COLUMNS, "seed", *generate.INPAINT_COLUMNS]
    assert list(table["placement"]) == ["in_place", "relocated", "frames", "in_place"]
    assert table.loc[0, "frame_id"] == "c0" and table.loc[2, "frame_id"].startswith("bg")
    for row in table.itertuples():
        image, frame, region = read_rgb(row.image), read_rgb(row.frame), read_mask(row.region)
        assert np.array_equal(image[~region], frame[~region])  # the sample is the frame outside the region
        label = read_mask(row.mask)  # what the segmenter trains on
        if row.placement == "relocated":
            own = read_mask(tmp_path / "conditions" / "masks" / f"{row.frame_id}.png")
            assert own.any() and (label & own).sum() == own.sum() and (label & region).any()
    digests = {p.name: p.read_bytes() for p in (tmp_path / "out" / "images").glob("*.png")}
    (tmp_path / "out" / "images" / "c1.png").unlink()
    assert run().equals(table)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "images").glob("*.png")} == digests
    monkeypatch.setattr(generate, "load_generation_pipeline", lambda *a, **k: pytest.fail("a finished shard"))
    assert run().equals(table)


# ---------------------------------------------------------------------------------------------- the measures
def test_the_inpainting_measures_and_their_undefined_rows():
    from hardgen.scoring.inpainting import COLUMNS, InpaintedSet, inpainting_table, outside_psnr, seam_ratio

    frames, labels, regions = [], [], []
    for i in range(6):
        image, lesion, fov = octagon_frame(i)
        frames.append(image)
        labels.append(lesion)
        regions.append(lesion_region(lesion, fov, 2))
    real = (frames, labels)
    # the frame itself: exact outside, no seam (ratio 1), the real images' own margin
    same = InpaintedSet(frames, labels, frames, regions)
    assert outside_psnr(frames, frames, regions) == (float("inf"), None)
    assert seam_ratio(frames, frames, regions, 2) == (1.0, None)
    # a sample one grey level off outside its region: 48.1 dB; a hard-edged grey disc in the region: a visible seam
    shifted = [np.where(r[..., None], f, f.astype(int) + 1).clip(0, 255).astype(np.uint8) for f, r in
               zip(frames, regions)]
    assert 48 < outside_psnr(shifted, frames, regions)[0] < 48.2
    flat = [np.where(r[..., None], 40, f).astype(np.uint8) for f, r in zip(frames, regions)]
    assert seam_ratio(flat, frames, regions, 2)[0] > 1.5
    whole = [np.ones_like(r) for r in regions]
    table, notes = inpainting_table(real, {("inpaint", "in_place"): same,
                                           ("hard_inpaint", "frames"): InpaintedSet(flat, labels, frames, whole)},
                                    {("inpaint", "in_place"): 0.5}, resolution=R)
    assert list(table.columns) == list(COLUMNS) and len(table) == 2
    first, second = table.iloc[0], table.iloc[1]
    assert first["outside_psnr"] == float("inf") and first["seam_ratio"] == 1.0
    assert first["margin_vs_real"] == pytest.approx(1.0) and first["hardness"] == 0.5
    # a region covering the whole image: no pixel outside, no seam; no hardness given: NaN, each with its note
    assert np.isnan(second[["outside_psnr", "seam_ratio", "hardness"]].astype(float)).all()
    assert len(notes) == 3 and all(note.startswith("hard_inpaint frames: ") for note in notes)
    assert "no pixel outside" in notes[0] and "no seam" in notes[1] and "no in-loss score" in notes[2]


def test_a_sets_hardness_is_its_mean_in_loss_z():
    from hardgen.scoring.inpainting import set_hardness

    scores = pd.DataFrame({"sample_id": ["a", "a", "a", "b", "b", "b"], "backbone": ["cnn", "vit", "held"] * 2,
                           "z": [1.0, 3.0, 100.0, 0.0, 2.0, 100.0]})
    assert set_hardness(scores, ["a", "b"], ["cnn", "vit"]) == 1.5  # (2 + 1) / 2; the held-out backbone left out
    assert np.isnan(set_hardness(scores, ["a", "c"], ["cnn"]))  # a sample without a score


def test_the_demo_background_frames_are_lesion_free_endoscope_frames(tmp_path):
    from hardgen.data.demo import make_background_frames

    files = make_background_frames(tmp_path / "bg", 2, 48, 64, seed=0)
    assert [f.name for f in files] == ["frame_0000.png", "frame_0001.png"]
    frames = [read_rgb(f) for f in files]
    again = make_background_frames(tmp_path / "again", 3, 48, 64, seed=0)  # a larger set keeps the smaller's frames
    assert all(np.array_equal(a, read_rgb(b)) for a, b in zip(frames, again))
    for frame in frames:
        fov = field_of_view(frame)
        assert 0.5 < fov.mean() < 1 and not fov[0, 0]  # the octagonal field of view, its black corners outside
    grey = make_background_frames(tmp_path / "us", 1, 48, 64, seed=0, modality="ultrasound")
    assert read_rgb(grey[0]).shape[2] == 3


# ---------------------------------------------------------------------------------------------- the report
def test_benchmark_md_says_whether_a_lesion_in_a_real_frame_helps_more():
    from hardgen.report.markdown import _inpainting_lines

    def row(policy, versus, ratio, mean, low, high):
        return {"arch": "cnn", "policy": policy, "ratio": ratio, "versus": versus, "metric": "mIoU", "n": 30,
                "mean_diff": mean, "ci_low": low, "ci_high": high, "method": "bootstrap_images"}

    contrasts = pd.DataFrame([row("hard", "plain", 1.0, 0.1, 0.05, 0.15),
                              row("hard_inpaint", "hard", 1.0, 0.02, 0.01, 0.03),
                              row("inpaint", "plain", 1.0, -0.01, -0.03, 0.01),
                              row("inpaint", "real", 1.0, 0.2, 0.1, 0.3),
                              row("hard_inpaint", "hard", 0.5, -0.02, -0.03, -0.01)])
    lines = _inpainting_lines(contrasts, "mIoU")
    assert lines[0] == "## Lesions in real frames"
    text = lines[2]
    assert "inpaint − plain ×1, mIoU -0.010 [-0.030, +0.010]" in text and "not told from noise" in text
    assert "hard_inpaint − hard ×1, mIoU +0.020 [+0.010, +0.030] (bootstrap over 30 test images of one seed): the " \
           "real frame helps more" in text
    assert "hard_inpaint − hard ×0.5" in text and "the whole image helps more" in text
    assert "hard − plain" not in text and "− real" not in text  # only the inpainting policies against their controls
    assert _inpainting_lines(contrasts[contrasts.policy == "hard"], "mIoU") == []


def test_the_gallery_shows_frame_mask_and_each_inpainting_variant(tmp_path):
    from hardgen.report.gallery import plot_inpainting

    manifests = {}
    for variant in ("hard_inpaint", "inpaint"):
        rows = []
        for i, placement in enumerate(["in_place", "relocated", "in_place", "frames"]):
            image, lesion, fov = octagon_frame(i)
            paths = {kind: tmp_path / variant / kind / f"s{i}.png" for kind in ("images", "masks", "frames", "regions")}
            write_image(paths["images"], image[::-1] if variant == "hard_inpaint" else image)
            write_mask(paths["masks"], lesion)
            write_image(paths["frames"], image)
            write_mask(paths["regions"], lesion_region(lesion, fov, 2))
            rows.append({"sample_id": f"s{i}", "image": paths["images"], "mask": paths["masks"], "placement": placement,
                         "frame": paths["frames"], "region": paths["regions"]})
        manifests[variant] = pd.DataFrame(rows)
    shown = plot_inpainting(manifests, tmp_path / "inpainting.png", k=1)
    assert list(zip(shown["placement"], shown["sample_id"])) == [("in_place", "s0"), ("relocated", "s1"),
                                                                ("frames", "s3")]
    assert (tmp_path / "inpainting.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------------- the workflow
@pytest.mark.slow
@pytest.mark.workflow
def test_both_inpainting_variants_run_through_the_workflow(tmp_path):
    """The shrunk demo (test_workflow's quick config: 8 images at 32 px, colour-matched polyps) with inpaint and
    hard_inpaint (the demo runs inpaint alone, for its 2-core time budget) into every placement, to the report."""
    import yaml
    from test_workflow import copy_workflow, quick_config, snakemake

    workdir = copy_workflow(tmp_path / "wf")
    args = quick_config(workdir / "quick.yaml")
    cfg = yaml.safe_load((workdir / "quick.yaml").read_text())
    cfg["generation"].update(variants=["plain", "hard", "inpaint", "hard_inpaint"],
                             inpaint={"dilate": 3, "feather": 3, "placements": ["in_place", "relocated", "frames"]})
    cfg["segment"]["policies"] = ["real", "plain", "hard", "inpaint", "hard_inpaint"]
    cfg["report"]["primary_contrast"] = {"policy": "hard_inpaint", "versus": "hard", "ratio": 1, "metric": "mIoU"}
    (workdir / "quick.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake(workdir, "--cores", "2", *args)
    results = workdir / "results"
    table = pd.read_csv(results / "tables" / "inpainting.csv")
    assert list(table.columns) == ["variant", "placement", "outside_psnr", "seam_ratio", "margin_vs_real", "hardness"]
    assert list(table["variant"].unique()) == ["inpaint", "hard_inpaint"] and len(table) >= 4
    assert (table["outside_psnr"] >= 60).all() and table["seam_ratio"].notna().all() and table["hardness"].notna().all()
    # colour-matched polyps: the real images' red chromaticity does not mark their masks, so no margin, and the log
    # says why
    assert table["margin_vs_real"].isna().all() and "margin_vs_real undefined" in (
        workdir / "logs" / "inpainting.log").read_text()
    for variant in ("inpaint", "hard_inpaint"):
        manifest = pd.read_csv(results / "generated" / variant / "manifest.csv")
        # at 32 px the 8 demo frames' polyps (17-54 % of a frame) leave little room: a lesion that fits no other frame
        # is drawn in place, so recorded
        assert {"in_place", "frames"} <= set(manifest["placement"]) <= {"in_place", "relocated", "frames"}
        for row in manifest.itertuples():
            image, frame = read_rgb(workdir / row.image), read_rgb(workdir / row.frame)
            region = read_mask(workdir / row.region)
            assert np.array_equal(image[~region], frame[~region])
    contrasts = pd.read_csv(results / "tables" / "contrasts.csv")
    assert {("inpaint", "plain"), ("hard_inpaint", "hard")} <= set(zip(contrasts["policy"], contrasts["versus"]))
    assert "## Lesions in real frames" in (results / "tables" / "benchmark.md").read_text()
    assert (results / "plots" / "inpainting.png").stat().st_size > 1000
    cost = pd.read_csv(results / "tables" / "variant_cost.csv").set_index("variant")
    assert "train_hard_lora" in cost.loc["hard_inpaint", "training_rules"]
