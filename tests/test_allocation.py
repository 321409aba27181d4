"""The generation plan (hardgen.scoring.allocation): per_mask samples per condition, uniform or by the judges' loss; ids and
seeds shared by every variant; generation of a plan is shard-independent."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen.core.io import DataError, sample_seed, write_image, write_mask
from hardgen.generator import generate
from hardgen.models.sampling import unit_to_uint8
from hardgen.scoring import allocation


def test_hardness_allocation_is_proportional_exact_and_at_least_one() -> None:
    losses = pd.Series({"a": 0.1, "b": 0.2, "c": 0.4, "d": 0.8, "e": 1.5})
    counts = allocation.allocate_counts(losses, per_mask=4)
    assert counts.sum() == 4 * 5 and (counts >= 1).all()
    # quotas 20·L/3: a 0.67 is pinned at 1, the other 19 go by b..e's losses (1.31, 2.62, 5.24, 9.83), floors
    # 1, 2, 5, 9 and the 2 left over to the largest remainders (e, c)
    assert counts.to_dict() == {"a": 1, "b": 1, "c": 3, "d": 5, "e": 10}
    # a higher loss never gets fewer samples, and the hardest mask gets the most
    order = losses.sort_values().index
    assert counts[order].is_monotonic_increasing and counts.idxmax() == "e"
    # proportional where no minimum binds: 2 : 1 : 1 with 6 samples = quotas 3, 1.5, 1.5 (the tie goes by id)
    assert allocation.allocate_counts({"x": 2.0, "y": 1.0, "z": 1.0}, per_mask=2).to_dict() == {"x": 3, "y": 2, "z": 1}
    assert allocation.allocate_counts({"x": 2.0, "y": 1.0, "z": 1.0}, per_mask=4).to_dict() == {"x": 6, "y": 3, "z": 3}
    # equal losses = uniform; one sample per mask whatever the losses
    assert (allocation.allocate_counts({"p": 0.3, "q": 0.3, "r": 0.3}, per_mask=5) == 5).all()
    assert (allocation.allocate_counts(losses, per_mask=1) == 1).all()
    # zero-loss masks still get one sample
    assert allocation.allocate_counts({"p": 0.0, "q": 1.0}, per_mask=3).to_dict() == {"p": 1, "q": 5}


@pytest.mark.parametrize("seed", range(20))
def test_allocation_invariants_on_random_losses(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, per_mask = int(rng.integers(1, 40)), int(rng.integers(1, 7))
    losses = pd.Series(rng.gamma(1.0, 1.0, n), index=[f"m{i}" for i in range(n)])
    counts = allocation.allocate_counts(losses, per_mask)
    assert counts.sum() == per_mask * n and (counts >= 1).all()
    ranked = counts[losses.sort_values().index].to_numpy()
    assert (np.diff(ranked) >= 0).all()  # more loss, never fewer samples
    quotas = per_mask * n * losses / losses.sum()
    assert (counts <= np.maximum(np.ceil(quotas), 1)).all()


def test_allocation_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="generation.per_mask"):
        allocation.allocate_counts({"a": 1.0}, per_mask=0)
    with pytest.raises(ValueError, match="generation.per_mask"):
        allocation.make_plan(["a"], 0, "uniform", 0)
    with pytest.raises(ValueError, match="generation.allocation"):
        allocation.make_plan(["a"], 1, "hardest", 0)
    with pytest.raises(ValueError, match="needs the judges' loss"):
        allocation.make_plan(["a"], 1, "hardness", 0)
    with pytest.raises(DataError, match="no judge loss for condition"):
        allocation.make_plan(["a", "b"], 2, "hardness", 0, {"a": 1.0})
    with pytest.raises(DataError, match="'b'.*finite"):
        allocation.allocate_counts({"a": 1.0, "b": float("nan")}, 2)
    with pytest.raises(DataError, match="'b'.*>= 0"):
        allocation.allocate_counts({"a": 1.0, "b": -0.5}, 2)
    with pytest.raises(DataError, match="every judge loss is 0"):
        allocation.allocate_counts({"a": 0.0, "b": 0.0}, 2)


def test_plan_ids_and_seeds() -> None:
    # per_mask 1: today's ids (the condition ids) and seeds (sample_seed of the id), whatever the allocation
    one = allocation.make_plan(["real-b", "real-a", "layout-a-0"], 1, "uniform", seed=7)
    assert list(one.columns) == list(allocation.PLAN_COLUMNS)
    assert list(one["sample_id"]) == ["layout-a-0", "real-a", "real-b"] == list(one["condition_id"])
    assert list(one["seed"]) == [sample_seed(s, 7) for s in one["sample_id"]] and one["judge_loss"].isna().all()
    hard_one = allocation.make_plan(["real-b", "real-a", "layout-a-0"], 1, "hardness", 7,
                                    {"real-a": 1.0, "real-b": 9.0, "layout-a-0": 1.0})
    assert list(hard_one["sample_id"]) == list(one["sample_id"])
    # per_mask 3: the condition id, then -k1, -k2; total exact; seeds from the sample ids
    three = allocation.make_plan(["real-a", "real-b"], 3, "uniform", seed=7)
    assert sorted(three["sample_id"]) == ["real-a", "real-a-k1", "real-a-k2", "real-b", "real-b-k1", "real-b-k2"]
    assert three.set_index("sample_id").at["real-b-k2", "k"] == 2
    assert three.set_index("sample_id").at["real-b-k2", "seed"] == sample_seed("real-b-k2", 7)
    hard = allocation.make_plan(["real-a", "real-b"], 3, "hardness", 7, {"real-a": 1.0, "real-b": 2.0})
    assert hard.groupby("condition_id").size().to_dict() == {"real-a": 2, "real-b": 4}
    assert set(hard["sample_id"]) >= {"real-a", "real-b-k3"}
    # a condition id that is also another condition's numbered sample id is refused
    with pytest.raises(DataError, match="real-a-k1"):
        allocation.make_plan(["real-a", "real-a-k1"], 2, "uniform", 0)


def test_plan_round_trip_and_errors(tmp_path: Path) -> None:
    plan = allocation.make_plan(["c1", "c2"], 2, "hardness", 0, {"c1": 1.0, "c2": 3.0})
    allocation.write_plan(plan, tmp_path / "plan.csv")
    back = allocation.read_plan(tmp_path / "plan.csv")
    pd.testing.assert_frame_equal(back, plan, check_dtype=False)
    with pytest.raises(DataError, match="nope.csv"):
        allocation.read_plan(tmp_path / "nope.csv")
    plan.iloc[:2].assign(sample_id="x").to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataError, match="dup.csv.*duplicate sample_id 'x'"):
        allocation.read_plan(tmp_path / "dup.csv")


def test_layouts_take_their_sources_loss() -> None:
    conditions = pd.DataFrame({"sample_id": ["real-1", "layout-1-0", "real-2"], "source_id": ["1", "1", "2"]})
    losses = allocation.condition_losses(conditions, pd.Series({"1": 0.25, "2": 0.75}))
    assert losses.to_dict() == {"real-1": 0.25, "layout-1-0": 0.25, "real-2": 0.75}
    with pytest.raises(DataError, match="source id"):
        allocation.condition_losses(conditions, pd.Series({"1": 0.25}))


def test_judge_losses_average_the_judges(tmp_path: Path) -> None:
    from hardgen.core.weights import save_state_dict
    from hardgen.segmentation.build import SegmenterSpec, build_segmenter
    from hardgen.segmentation.measures import sample_losses

    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        image, mask = tmp_path / f"img{i}.png", tmp_path / f"mask{i}.png"
        write_image(image, rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        write_mask(mask, rng.random((40, 48)) > 0.6)
        rows.append({"id": str(i), "split": "train", "image": str(image), "mask": str(mask)})
    rows.append({**rows[0], "id": "t", "split": "Kvasir"})  # test images never enter the allocation
    manifest = pd.DataFrame(rows)
    spec = SegmenterSpec(arch="Unet", encoder="resnet18")
    judges, per_judge = [], []
    for k in range(2):
        torch.manual_seed(k)
        model = build_segmenter(spec)
        save_state_dict(tmp_path / f"judge{k}.safetensors", model.state_dict())
        judges.append((spec, tmp_path / f"judge{k}.safetensors", f"j{k}"))
        pairs = manifest[manifest.split == "train"].rename(columns={"id": "sample_id"})
        per_judge.append(sample_losses(model.eval(), pairs, size=32).set_index("sample_id")["loss"])
    losses = allocation.real_image_losses(manifest, judges, size=32)
    assert list(losses.index) == ["0", "1", "2"]
    assert np.allclose(losses, (per_judge[0] + per_judge[1]) / 2)
    assert not np.allclose(per_judge[0], per_judge[1])  # two different judges: the mean is not vacuous


# ------------------------------------------------------------------------------- generating a plan
RES = 16


def _conditions(root: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        sid = f"real-{i}"
        cond, mask = root / "c" / f"{sid}.png", root / "m" / f"{sid}.png"
        write_image(cond, np.repeat(((rng.random((RES, RES)) > 0.8) * 255).astype(np.uint8)[..., None], 3, axis=2))
        write_mask(mask, rng.random((RES, RES)) > 0.5)
        rows.append({"sample_id": sid, "source_id": str(i), "kind": "real", "condition": str(cond), "mask": str(mask)})
    pd.DataFrame(rows).to_csv(root / "conditions.csv", index=False)
    return root / "conditions.csv"


def noise_renderer(conditions, generators, masks) -> np.ndarray:
    noise = np.stack([torch.rand(RES, RES, 3, generator=g).numpy() for g in generators])
    return unit_to_uint8((noise + np.stack(conditions) / 255.0) / 2)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def test_planned_generation_is_shard_independent_and_merges(tmp_path: Path) -> None:
    conditions = _conditions(tmp_path, 4)
    plan = allocation.make_plan([f"real-{i}" for i in range(4)], 2, "hardness", 5,
                                {"real-0": 0.1, "real-1": 0.2, "real-2": 0.3, "real-3": 1.4})
    allocation.write_plan(plan, tmp_path / "plan.csv")
    table = generate.planned_samples(tmp_path / "plan.csv", conditions)
    assert list(table.columns) == ["sample_id", "condition_id", "condition", "mask", "seed"]
    assert len(table) == 8 and table.groupby("condition_id").size()["real-3"] == 5
    csvs = {}
    for n_shards in (1, 3):
        out = tmp_path / f"out{n_shards}"
        frames = [generate.run_shard(noise_renderer, table, k, n_shards, out / f"shard-{k}", resolution=RES,
                                     variant="plain", batch_size=2) for k in range(n_shards)]
        csvs[n_shards] = []
        for k, frame in enumerate(frames):
            frame.to_csv(out / f"shard-{k}.csv", index=False)
            csvs[n_shards].append(out / f"shard-{k}.csv")
    merged = generate.merge_shards(csvs[3], tmp_path / "manifest.csv", plan=tmp_path / "plan.csv")
    assert list(merged["sample_id"]) == list(plan["sample_id"]) and list(merged["seed"]) == list(plan["seed"])
    assert list(merged.columns) == [*generate.MANIFEST_COLUMNS, "seed"]
    one = _digests(tmp_path / "out1" / "shard-0" / "images")
    three = {}
    for k in range(3):
        three |= _digests(tmp_path / "out3" / f"shard-{k}" / "images")
    assert one == three and len(one) == 8
    # the samples of one condition share its condition image but not their noise
    assert one["real-3.png"] != one["real-3-k1.png"]
    # a plan sample missing from the shards, or a shard sample not planned, is an error
    with pytest.raises(DataError, match="planned sample ids not generated"):
        generate.merge_shards(csvs[3][:2], tmp_path / "partial.csv", plan=tmp_path / "plan.csv")
    with pytest.raises(DataError, match="not planned samples"):
        generate.merge_shards(csvs[3], tmp_path / "extra.csv", plan=plan.iloc[1:])
    assert not (tmp_path / "partial.csv").exists() and not (tmp_path / "extra.csv").exists()


def test_plan_naming_an_unknown_condition_is_an_error(tmp_path: Path) -> None:
    conditions = _conditions(tmp_path, 2)
    plan = allocation.make_plan(["real-0", "real-9"], 1, "uniform", 0)
    with pytest.raises(DataError, match="real-9"):
        generate.planned_samples(plan, conditions)
