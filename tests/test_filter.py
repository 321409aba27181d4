"""Tests for hardgen.scoring.filter: which generated samples each policy keeps, at each synthetic ratio."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen.core.io import DataError
from hardgen.scoring.filter import (
    POLICIES,
    SUBSET_COLUMNS,
    build_subsets,
    hardness,
    pool,
    real_count,
    select_subset,
    subset_seed,
    synthetic_count,
    write_subset,
)

N = 100
N_REAL = 20  # ratio 0.5 -> 10, 1 -> 20, 2 -> 40 synthetic images


def make_tables(n: int = N, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Generated manifests for three variants and two-backbone scores; returns the hard samples' mean z too.

    For hard samples, mean z over backbones is a shuffled 0..n-1 while the cnn z alone runs the
    other way, so 'all' and 'cnn' must select different samples. Every sample's fidelity is (i mod 10) / 10, so
    a min_fidelity of 0.5 keeps the half with i mod 10 >= 5.
    """
    rng = np.random.default_rng(seed)
    generated, scores = [], []
    mean_z = rng.permutation(n).astype(float)
    for variant in ("plain", "hard", "feedback"):
        for i in range(n):
            sid = f"c{i:03d}"
            generated.append({"sample_id": sid, "image": f"gen/{variant}/images/{sid}.png",
                              "mask": f"gen/{variant}/masks/{sid}.png", "condition": f"cond/{sid}.png",
                              "variant": variant})
            base = mean_z[i] if variant == "hard" else rng.normal()
            cnn_z = -base if variant == "hard" else base
            vit_z = 2 * base - cnn_z  # mean of (cnn_z, vit_z) is base
            for key, z in (("cnn", cnn_z), ("vit", vit_z)):
                scores.append({"sample_id": sid, "variant": variant, "backbone": key, "distance": 10 + z, "z": z,
                               "fidelity_dice": 0.5, "fidelity_separation": 0.5, "fidelity": (i % 10) / 10})
    return pd.DataFrame(scores), pd.DataFrame(generated), mean_z


def test_real_policy_is_empty_and_has_ratio_zero():
    scores, generated, _ = make_tables()
    real = select_subset("real", scores, generated)
    assert real.empty and list(real.columns) == SUBSET_COLUMNS
    assert select_subset("real", scores, generated, ratio=0, n_real=N_REAL).empty
    with pytest.raises(ValueError, match="ratio 0"):
        select_subset("real", scores, generated, ratio=1, n_real=N_REAL)


@pytest.mark.parametrize(("ratio", "expected"), [(0.5, 10), (1, 20), (2, 40), (0.33, 7)])
def test_every_synthetic_policy_trains_with_round_ratio_times_real(ratio, expected):
    scores, generated, _ = make_tables()
    assert synthetic_count(ratio, N_REAL) == expected
    for policy in ("plain", "hard", "feedback", "hard_band", "hard_faithful"):
        subset = select_subset(policy, scores, generated, ratio, N_REAL, band=(0.25, 0.95), seed=3)
        assert list(subset.columns) == SUBSET_COLUMNS
        assert len(subset) == expected and subset["sample_id"].is_unique
        assert set(subset["variant"]) == {"hard" if policy.startswith("hard") else policy}
        assert list(subset["sample_id"]) == sorted(subset["sample_id"])


def test_synthetic_count_rounds_and_refuses_empty_subsets():
    assert synthetic_count(0.5, 25) == 12 and synthetic_count(1.5, 25) == 38  # round half to even, then 37.5 -> 38
    with pytest.raises(ValueError, match=r"segment\.synthetic_ratios.*rounds to 0"):
        synthetic_count(0.01, 20)
    with pytest.raises(ValueError, match=r"segment\.synthetic_ratios"):
        synthetic_count(0, 20)
    with pytest.raises(ValueError, match="real training images"):
        synthetic_count(1, 0)


def test_hard_band_pool_is_the_quantile_band():
    scores, generated, mean_z = make_tables()
    band_pool = pool("hard_band", scores, generated, band=(0.5, 0.95))
    low, high = np.quantile(mean_z, [0.5, 0.95])  # 49.5 and 94.05 for 0..99
    expected = {f"c{i:03d}" for i in range(N) if low <= mean_z[i] <= high}
    assert len(expected) == 45
    assert set(band_pool["sample_id"]) == expected and set(band_pool["variant"]) == {"hard"}
    # a draw from the band stays in the band
    drawn = select_subset("hard_band", scores, generated, 1, N_REAL, band=(0.5, 0.95), seed=1)
    assert set(drawn["sample_id"]) <= expected


def test_hard_band_under_one_backbone_uses_only_its_z():
    scores, generated, mean_z = make_tables()
    band_pool = pool("hard_band", scores, generated, band=(0.0, 0.2), score_backbone="cnn")
    # cnn z = −mean z, so its lowest fifth (by cnn z) is the top of the mean-z ranking.
    kept_z = sorted(mean_z[[int(s[1:]) for s in band_pool["sample_id"]]])
    assert kept_z == [float(v) for v in range(80, 100)]
    h = hardness(scores, "hard", "vit")
    assert h.loc["c000"] == pytest.approx(3 * mean_z[0])


def test_hard_faithful_keeps_only_hard_samples_that_pass_the_guard():
    scores, generated, _ = make_tables()
    faithful = pool("hard_faithful", scores, generated, min_fidelity=0.5)
    assert set(faithful["sample_id"]) == {f"c{i:03d}" for i in range(N) if i % 10 >= 5}  # fidelity >= 0.5
    assert set(faithful["variant"]) == {"hard"}
    drawn = select_subset("hard_faithful", scores, generated, 2, N_REAL, min_fidelity=0.5, seed=4)
    assert len(drawn) == 40 and all(int(s[1:]) % 10 >= 5 for s in drawn["sample_id"])
    assert len(pool("hard_faithful", scores, generated, min_fidelity=0.0)) == N  # threshold 0 keeps every sample
    with pytest.raises(DataError, match="no 'fidelity' column"):
        pool("hard_faithful", scores.drop(columns="fidelity"), generated)
    partial = scores.drop(scores[(scores["variant"] == "hard") & (scores["sample_id"] == "c007")].index)
    with pytest.raises(DataError, match=r"without a fidelity.*c007"):
        pool("hard_faithful", partial, generated)


def test_draws_pair_variants_nest_ratios_and_follow_the_seed():
    scores, generated, _ = make_tables()
    seed = subset_seed(0, 0)

    def ids(policy, ratio, s=seed, **kwargs):
        return set(select_subset(policy, scores, generated, ratio, N_REAL, seed=s, **kwargs)["sample_id"])

    # plain, hard and feedback share sample ids (one per condition): one seed picks the same conditions
    assert ids("plain", 1) == ids("hard", 1) == ids("feedback", 1)
    # a larger ratio keeps every sample of a smaller one
    assert ids("hard", 0.5) < ids("hard", 1) < ids("hard", 2)
    # a filtered pool keeps the draw's order: hard_band takes the band samples hard would rank first
    band = set(pool("hard_band", scores, generated, band=(0.25, 0.95))["sample_id"])
    assert ids("hard", 1) & band <= ids("hard_band", 1, band=(0.25, 0.95))
    faithful = set(pool("hard_faithful", scores, generated)["sample_id"])
    assert ids("hard", 1) & faithful <= ids("hard_faithful", 1)
    # another segmenter seed or config seed: another draw; the same seed: the same table
    draws = {frozenset(ids("hard", 1, s)) for s in (subset_seed(0, 0), subset_seed(0, 1), subset_seed(1, 0))}
    assert len(draws) == 3
    pd.testing.assert_frame_equal(select_subset("hard", scores, generated, 1, N_REAL, seed=seed),
                                  select_subset("hard", scores, generated, 1, N_REAL, seed=seed))
    # uniform: across seeds every sample gets picked now and then, about 20 % of the time at ratio 1
    counts = pd.Series([s for k in range(60) for s in ids("plain", 1, k)]).value_counts()
    assert len(counts) == N and 0.12 < counts.mean() / 60 < 0.28
    # not the band: a uniform draw of hard reaches below the band
    assert ids("hard", 2) - band


def test_subset_seed_follows_both_seeds_and_rejects_bad_ones():
    seeds = {subset_seed(b, s) for b in range(3) for s in range(3)}
    assert len(seeds) == 9  # (0, 1) and (1, 0) differ too: not a sum
    assert subset_seed(0, 2) == subset_seed(0, 2) and 0 <= subset_seed(0, 2) < 2**32
    with pytest.raises(ValueError, match=r"segment\.seeds"):
        subset_seed(0, -1)
    with pytest.raises(ValueError, match=r"seed"):
        subset_seed(1.5, 0)


def test_a_pool_smaller_than_the_ratio_asks_names_the_keys_to_change():
    scores, generated, _ = make_tables()
    # ratio 2 asks 40 of the 45-sample band, fine; ratio 3 asks 60
    assert len(select_subset("hard_band", scores, generated, 2, N_REAL, band=(0.5, 0.95))) == 40
    with pytest.raises(DataError, match=r"policy 'hard_band' at ratio 3: needs 60 synthetic images.*holds 45"
                                        r".*generation\.per_mask.*segment\.synthetic_ratios.*filter\.band"):
        select_subset("hard_band", scores, generated, 3, N_REAL, band=(0.5, 0.95))
    with pytest.raises(DataError, match=r"'hard_faithful' at ratio 3.*holds 50.*filter\.min_fidelity"):
        select_subset("hard_faithful", scores, generated, 3, N_REAL, min_fidelity=0.5)
    with pytest.raises(DataError, match=r"'plain' at ratio 6: needs 120 .*holds 100"):
        select_subset("plain", scores, generated, 6, N_REAL)


def test_removed_controls_and_bad_arguments_raise_named_errors():
    scores, generated, _ = make_tables(n=10)
    for removed, kept in (("hard_random", "'hard'"), ("random", "'plain'")):
        with pytest.raises(ValueError, match=rf"policy '{removed}': removed.*{kept} at that ratio is the size-matched"):
            select_subset(removed, scores, generated, 1, 5)
    with pytest.raises(ValueError, match="policy 'hardest'"):
        select_subset("hardest", scores, generated, 1, 5)
    with pytest.raises(ValueError, match="needs a ratio"):
        select_subset("hard", scores, generated)
    for band in [(0.2, 1.5), (0.9, 0.5), (-0.1, 0.5), (0.5,), "ab"]:
        with pytest.raises(ValueError, match=r"filter\.band"):
            select_subset("hard_band", scores, generated, 1, 5, band=band)
    with pytest.raises(ValueError, match=r"filter\.score_backbone.*'swin'"):
        select_subset("hard_band", scores, generated, 1, 5, score_backbone="swin")
    with pytest.raises(ValueError, match=r"filter\.min_fidelity"):
        select_subset("hard_faithful", scores, generated, 1, 5, min_fidelity=2)


def test_missing_scores_or_variants_raise():
    scores, generated, _ = make_tables(n=10)
    partial = scores.drop(scores[(scores["variant"] == "hard") & (scores["sample_id"] == "c003")].index)
    with pytest.raises(DataError, match="c003"):
        select_subset("hard_band", partial, generated, 0.5, 4)
    one_backbone_missing = scores.drop(
        scores[(scores["variant"] == "hard") & (scores["sample_id"] == "c004") & (scores["backbone"] == "vit")].index
    )
    with pytest.raises(DataError, match="c004"):
        select_subset("hard_band", one_backbone_missing, generated, 0.5, 4)
    with pytest.raises(DataError, match="'feedback'"):
        select_subset("feedback", scores, generated[generated["variant"] != "feedback"], 0.5, 4)


def test_write_and_build_subset_round_trip(tmp_path):
    scores, generated, _ = make_tables(n=20)
    score_paths, generated_paths = [], []
    for variant in ("plain", "hard"):
        score_paths.append(tmp_path / f"scores_{variant}.csv")
        scores[scores["variant"] == variant].to_csv(score_paths[-1], index=False)
        generated_paths.append(tmp_path / f"gen_{variant}.csv")
        generated[generated["variant"] == variant].to_csv(generated_paths[-1], index=False)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(12)], "split": ["train"] * 8 + ["Kvasir"] * 4}).to_csv(manifest,
                                                                                                      index=False)
    n_real = real_count(manifest)
    assert n_real == 8
    out = tmp_path / "subsets" / "hard_band" / "ratio-1" / "seed-0.csv"
    [subset] = build_subsets([("hard_band", 1.0)], score_paths, generated_paths, [out], n_real=n_real,
                             band=(0.25, 0.75))
    assert len(subset) == 8  # of the 10 band samples (quantiles of 0..19 at .25/.75 keep 5..14)
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"sample_id": str}), subset)
    assert sorted(p.name for p in out.parent.iterdir()) == ["seed-0.csv"]
    for seed in (0, 1):
        [drawn] = build_subsets([("hard", 0.5)], score_paths, generated_paths,
                                [tmp_path / "subsets" / "hard" / "ratio-0.5" / f"seed-{seed}.csv"],
                                n_real=n_real, seed=subset_seed(0, seed))
        assert len(drawn) == 4 and set(drawn["variant"]) == {"hard"}
    seed_tables = [pd.read_csv(tmp_path / "subsets" / "hard" / "ratio-0.5" / f"seed-{s}.csv") for s in (0, 1)]
    assert set(seed_tables[0]["sample_id"]) != set(seed_tables[1]["sample_id"])
    # rule filter (segment.batch_runs): every (policy, ratio) of one seed in one call, each file the one-run call's
    runs = [("hard_band", 1.0), ("hard", 0.5), ("plain", 1.0)]
    outs = [tmp_path / "batch" / p / f"ratio-{r:g}" / "seed-1.csv" for p, r in runs]
    batch = build_subsets(runs, score_paths, generated_paths, outs, n_real=n_real, band=(0.25, 0.75),
                          seed=subset_seed(0, 1))
    for (policy, ratio), out_path, subset in zip(runs, outs, batch, strict=True):
        [single] = build_subsets([(policy, ratio)], score_paths, generated_paths, [tmp_path / "single.csv"],
                                 n_real=n_real, band=(0.25, 0.75), seed=subset_seed(0, 1))
        pd.testing.assert_frame_equal(subset, single)
        pd.testing.assert_frame_equal(pd.read_csv(out_path, dtype={"sample_id": str}), single)
    pd.testing.assert_frame_equal(batch[1], pd.read_csv(tmp_path / "subsets" / "hard" / "ratio-0.5" / "seed-1.csv",
                                                        dtype={"sample_id": str}))
    with pytest.raises(ValueError, match="3 \\(policy, ratio\\) pairs for 2 output paths"):
        build_subsets(runs, score_paths, generated_paths, outs[:2], n_real=n_real)
    with pytest.raises(DataError, match="lacks columns"):
        write_subset(subset.drop(columns="mask"), tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    pd.DataFrame({"id": ["a"], "split": ["Kvasir"]}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DataError, match="no training images"):
        real_count(tmp_path / "empty.csv")
    assert set(POLICIES) == {"real", "plain", "hard", "feedback", "mined", "guided", "inpaint", "hard_inpaint",
                             "hard_band", "hard_faithful"}


def test_a_short_pool_is_recorded_and_skipped_or_stops_the_job(tmp_path):
    from hardgen.scoring.filter import ShortPool, read_pool_record

    scores, generated, _ = make_tables(n=20)
    score_paths, generated_paths = [tmp_path / "scores.csv"], [tmp_path / "generated.csv"]
    scores.to_csv(score_paths[0], index=False)
    generated.to_csv(generated_paths[0], index=False)
    # hard_band's band holds 10 of the 20 hard samples: ratio 1 of 8 real images needs 8 (fine), ratio 2 needs 16
    runs = [("hard_band", 1.0), ("hard_band", 2.0), ("hard", 2.0)]
    outs = [tmp_path / "skip" / p / f"ratio-{r:g}" / "seed-3.csv" for p, r in runs]
    records = [out.with_suffix(".json") for out in outs]
    subsets = build_subsets(runs, score_paths, generated_paths, outs, n_real=8, band=(0.25, 0.75), seed=1,
                            record_paths=records, segmenter_seed=3, on_short_pool="skip")
    assert [len(s) for s in subsets] == [8, 0, 16]
    assert len(pd.read_csv(outs[1])) == 0 and list(pd.read_csv(outs[1]).columns) == ["image", "mask", "sample_id",
                                                                                      "variant"]
    short = read_pool_record(records[1])
    assert {k: short[k] for k in ("policy", "ratio", "seed", "real_images", "pool", "need", "feasible")} == {
        "policy": "hard_band", "ratio": 2.0, "seed": 3, "real_images": 8, "pool": 10, "need": 16, "feasible": False}
    assert "filter.band" in short["reason"] and "holds 10" in short["reason"]
    filled = [read_pool_record(records[k]) for k in (0, 2)]
    assert [(r["pool"], r["need"], r["feasible"], r["reason"]) for r in filled] == [(10, 8, True, None),
                                                                                   (20, 16, True, None)]
    # error: the job stops and writes nothing (not even the subsets it could fill)
    outs = [tmp_path / "error" / p / f"ratio-{r:g}" / "seed-3.csv" for p, r in runs]
    with pytest.raises(ShortPool, match="'hard_band' at ratio 2: needs 16.*holds 10") as err:
        build_subsets(runs, score_paths, generated_paths, outs, n_real=8, band=(0.25, 0.75), seed=1,
                      record_paths=[o.with_suffix(".json") for o in outs], on_short_pool="error")
    assert (err.value.pool_size, err.value.need) == (10, 16) and not (tmp_path / "error").exists()
    with pytest.raises(ValueError, match="on_short_pool"):
        build_subsets(runs, score_paths, generated_paths, outs, n_real=8, on_short_pool="ignore")
