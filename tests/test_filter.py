"""Tests for hardgen.filter: which generated samples each policy keeps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hardgen.filter import (
    POLICIES,
    SUBSET_COLUMNS,
    build_subset,
    hardness,
    select_subset,
    subset_seed,
    write_subset,
)
from hardgen.io import DataError

N = 100


def make_tables(n: int = N, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Generated manifests for three variants and two-backbone scores; returns the hard samples' mean z too.

    For hard samples, mean z over backbones is a shuffled 0..n-1 while the cnn z alone runs the
    other way, so 'all' and 'cnn' must select different samples.
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
                scores.append({"sample_id": sid, "variant": variant, "backbone": key, "distance": 10 + z, "z": z})
    return pd.DataFrame(scores), pd.DataFrame(generated), mean_z


def test_real_policy_is_empty_and_variant_policies_take_everything():
    scores, generated, _ = make_tables()
    real = select_subset("real", scores, generated)
    assert real.empty and list(real.columns) == SUBSET_COLUMNS
    for variant in ("plain", "hard", "feedback"):
        subset = select_subset(variant, scores, generated)
        assert list(subset.columns) == SUBSET_COLUMNS
        assert len(subset) == N and set(subset["variant"]) == {variant}
        assert subset["image"].str.startswith(f"gen/{variant}/").all()
        assert list(subset["sample_id"]) == sorted(subset["sample_id"])


def test_hard_band_keeps_samples_between_the_two_quantiles():
    scores, generated, mean_z = make_tables()
    subset = select_subset("hard_band", scores, generated, band=(0.5, 0.95))
    low, high = np.quantile(mean_z, [0.5, 0.95])  # 49.5 and 94.05 for 0..99
    expected = {f"c{i:03d}" for i in range(N) if low <= mean_z[i] <= high}
    assert len(expected) == 45
    assert set(subset["sample_id"]) == expected and set(subset["variant"]) == {"hard"}
    kept_z = mean_z[[int(s[1:]) for s in subset["sample_id"]]]
    assert kept_z.min() == 50 and kept_z.max() == 94


def test_hard_band_under_one_backbone_uses_only_its_z():
    scores, generated, mean_z = make_tables()
    subset = select_subset("hard_band", scores, generated, band=(0.0, 0.2), score_backbone="cnn")
    # cnn z = −mean z, so its lowest fifth (by cnn z) is the top of the mean-z ranking.
    kept_z = sorted(mean_z[[int(s[1:]) for s in subset["sample_id"]]])
    assert kept_z == [float(v) for v in range(80, 100)]
    h = hardness(scores, "hard", "vit")
    assert h.loc["c000"] == pytest.approx(3 * mean_z[0])


def test_random_matches_hard_band_count_with_seeded_plain_draws():
    scores, generated, _ = make_tables()
    band = select_subset("hard_band", scores, generated)
    first = select_subset("random", scores, generated, seed=1)
    assert len(first) == len(band) and set(first["variant"]) == {"plain"}
    assert first["sample_id"].is_unique
    pd.testing.assert_frame_equal(first, select_subset("random", scores, generated, seed=1))
    other = select_subset("random", scores, generated, seed=2)
    assert set(other["sample_id"]) != set(first["sample_id"])
    # Uniform: across seeds every plain sample gets picked now and then, about 45 % of the time.
    draws = [select_subset("random", scores, generated, seed=s) for s in range(40)]
    counts = pd.concat(draws)["sample_id"].value_counts()
    assert len(counts) == N and 0.3 < counts.mean() / 40 < 0.6


def test_hard_random_is_a_same_size_random_subset_of_hard():
    scores, generated, mean_z = make_tables()
    band = select_subset("hard_band", scores, generated)
    hard_ids = set(generated.loc[generated["variant"] == "hard", "sample_id"])
    draws = {}
    for seed in (subset_seed(0, 0), subset_seed(0, 1), subset_seed(1, 0)):
        draw = select_subset("hard_random", scores, generated, seed=seed)
        assert list(draw.columns) == SUBSET_COLUMNS
        assert len(draw) == len(band) == 45 and draw["sample_id"].is_unique
        assert set(draw["variant"]) == {"hard"} and set(draw["sample_id"]) <= hard_ids
        assert draw["image"].str.startswith("gen/hard/").all()
        pd.testing.assert_frame_equal(draw, select_subset("hard_random", scores, generated, seed=seed))
        draws[seed] = frozenset(draw["sample_id"])
    assert len(set(draws.values())) == 3  # other segmenter seed or config seed: another draw
    # not the band: a uniform draw reaches below the 0.5 quantile of hardness about half of the time
    below = [s for s in draws[subset_seed(0, 0)] if mean_z[int(s[1:])] < 49.5]
    assert 10 < len(below) < 35
    # random draws plain samples with the same seed: the same conditions, the other generator (a paired control)
    plain = select_subset("random", scores, generated, seed=subset_seed(0, 0))
    assert set(plain["variant"]) == {"plain"} and frozenset(plain["sample_id"]) == draws[subset_seed(0, 0)]


def test_subset_seed_follows_both_seeds_and_rejects_bad_ones():
    seeds = {subset_seed(b, s) for b in range(3) for s in range(3)}
    assert len(seeds) == 9  # (0, 1) and (1, 0) differ too: not a sum
    assert subset_seed(0, 2) == subset_seed(0, 2) and 0 <= subset_seed(0, 2) < 2**32
    with pytest.raises(ValueError, match=r"segment\.seeds"):
        subset_seed(0, -1)
    with pytest.raises(ValueError, match=r"seed"):
        subset_seed(1.5, 0)


def test_random_needs_as_many_plain_samples_as_the_band_keeps():
    scores, generated, _ = make_tables(n=10)
    band = select_subset("hard_band", scores, generated, band=(0.0, 1.0))
    assert len(band) == 10
    short = pd.concat([generated[generated["variant"] != "plain"], generated[generated["variant"] == "plain"].iloc[:9]])
    with pytest.raises(DataError, match=r"policy 'random': needs 10 plain samples.*only 9"):
        select_subset("random", scores, short, band=(0.0, 1.0))
    # hard_random draws from the very samples the band is a subset of, so its pool always suffices
    assert len(select_subset("hard_random", scores, short, band=(0.0, 1.0))) == 10


def test_bad_policy_band_and_backbone_raise_named_errors():
    scores, generated, _ = make_tables(n=10)
    with pytest.raises(ValueError, match="policy 'hardest'"):
        select_subset("hardest", scores, generated)
    for band in [(0.2, 1.5), (0.9, 0.5), (-0.1, 0.5), (0.5,), "ab"]:
        with pytest.raises(ValueError, match=r"filter\.band"):
            select_subset("hard_band", scores, generated, band=band)
    with pytest.raises(ValueError, match=r"filter\.score_backbone.*'swin'"):
        select_subset("hard_band", scores, generated, score_backbone="swin")


def test_missing_scores_or_variants_raise():
    scores, generated, _ = make_tables(n=10)
    partial = scores.drop(scores[(scores["variant"] == "hard") & (scores["sample_id"] == "c003")].index)
    with pytest.raises(DataError, match="c003"):
        select_subset("hard_band", partial, generated)
    one_backbone_missing = scores.drop(
        scores[(scores["variant"] == "hard") & (scores["sample_id"] == "c004") & (scores["backbone"] == "vit")].index
    )
    with pytest.raises(DataError, match="c004"):
        select_subset("hard_band", one_backbone_missing, generated)
    with pytest.raises(DataError, match="'feedback'"):
        select_subset("feedback", scores, generated[generated["variant"] != "feedback"])


def test_write_and_build_subset_round_trip(tmp_path):
    scores, generated, _ = make_tables(n=20)
    score_paths, generated_paths = [], []
    for variant in ("plain", "hard"):
        score_paths.append(tmp_path / f"scores_{variant}.csv")
        scores[scores["variant"] == variant].to_csv(score_paths[-1], index=False)
        generated_paths.append(tmp_path / f"gen_{variant}.csv")
        generated[generated["variant"] == variant].to_csv(generated_paths[-1], index=False)
    out = tmp_path / "subsets" / "hard_band" / "seed-0.csv"
    subset = build_subset("hard_band", score_paths, generated_paths, out, band=(0.25, 0.75))
    assert len(subset) == 10  # quantiles of 0..19 at .25/.75 are 4.75 and 14.25: keeps 5..14
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"sample_id": str}), subset)
    assert sorted(p.name for p in out.parent.iterdir()) == ["seed-0.csv"]
    for seed in (0, 1):
        drawn = build_subset("hard_random", score_paths, generated_paths,
                             tmp_path / "subsets" / "hard_random" / f"seed-{seed}.csv", band=(0.25, 0.75),
                             seed=subset_seed(0, seed))
        assert len(drawn) == 10 and set(drawn["variant"]) == {"hard"}
    seed_tables = [pd.read_csv(tmp_path / "subsets" / "hard_random" / f"seed-{s}.csv") for s in (0, 1)]
    assert set(seed_tables[0]["sample_id"]) != set(seed_tables[1]["sample_id"])
    with pytest.raises(DataError, match="lacks columns"):
        write_subset(subset.drop(columns="mask"), tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    assert set(POLICIES) == {"real", "plain", "hard", "feedback", "hard_band", "hard_random", "random"}
