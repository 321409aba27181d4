"""Training-free hardness (hardgen.generator.mining): noise mining keeps the most discrepant candidate and renders it exactly as
plain generation would; guidance raises the discrepancy; settings fail loudly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen.core.io import read_rgb, sample_seed, write_image, write_mask
from hardgen.core.weights import save_state_dict
from hardgen.generator import generate, mining

RES = 16
STEPS = 3
PROMPT = "an endoscopic image of a colon polyp"
KW = {"seed": 3, "device": "cpu"}


def _generate(base: Path, lora: Path, table: Path, k: int, n: int, out: Path, *, variant: str,
              **settings: object) -> pd.DataFrame:
    """generate_shard of shard ``k`` of ``n`` (PROMPT, RES, STEPS; KW and ``settings`` as generation settings)."""
    sampling = generate.Sampling(PROMPT, RES, STEPS)
    return generate.generate_shard(generate.GenerationShard(base, lora, table, k, n, out, variant),
                                   generate.GenerationSettings(sampling, **{**KW, **settings}))


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pipe(tiny_model: tuple[Path, Path]):
    base, lora = tiny_model
    return generate.load_generation_pipeline(base, lora, device="cpu", dtype="float32")


def _conditions(root: Path, n: int) -> Path:
    """n square masks at different places, their canny-like edge conditions; returns the conditions CSV."""
    rows = []
    for i in range(n):
        mask = np.zeros((RES, RES), bool)
        mask[2 + i % 5: 10 + i % 5, 3 + (2 * i) % 5: 12 + (2 * i) % 5] = True
        edges = mask ^ np.pad(mask[1:-1, 1:-1], 1)
        sid = f"c{i:02d}"
        cond, mask_path = root / "cond" / f"{sid}.png", root / "mask" / f"{sid}.png"
        write_image(cond, np.repeat(edges[..., None].astype(np.uint8) * 255, 3, axis=2))
        write_mask(mask_path, mask)
        rows.append({"sample_id": sid, "source_id": str(i), "kind": "real", "condition": str(cond),
                     "mask": str(mask_path)})
    path = root / "conditions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def brightness(images01: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """A constructed discrepancy: mean brightness (differentiable, any scale)."""
    return images01.mean(dim=(1, 2, 3))


class Recording:
    """A constructed discrepancy that remembers every value it returned, in call order."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(self, images01: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        assert images01.shape[1:] == (3, RES, RES) and masks.shape == (images01.shape[0], 1, RES, RES)
        assert masks.dtype == torch.bool and 0.0 <= float(images01.min()) and float(images01.max()) <= 1.0
        values = -(images01[:, 0] - images01[:, 2]).mean(dim=(1, 2))  # bluer than red = "harder"
        self.values += values.tolist()
        return values


# --------------------------------------------------------------------------------------- pure helpers
def test_candidate_seeds_start_with_the_samples_own_seed() -> None:
    seed = sample_seed("real-7", 0)
    seeds = [mining.candidate_seed(seed, c) for c in range(6)]
    assert seeds[0] == seed and len(set(seeds)) == 6
    assert seeds == [mining.candidate_seed(seed, c) for c in range(6)]  # deterministic
    assert mining.candidate_seed(seed + 1, 1) != seeds[1]  # derived from the sample's seed
    with pytest.raises(ValueError, match="candidate"):
        mining.candidate_seed(seed, -1)


def test_pick_candidates_is_the_argmax_with_ties_to_the_plain_noise() -> None:
    scores = np.array([[0.1, 0.7, 0.3], [2.0, -1.0, 2.0], [-3.0, -2.0, -2.5]])
    assert mining.pick_candidates(scores) == [1, 0, 1]
    assert mining.pick_candidates(np.array([[5.0]])) == [0]
    with pytest.raises(RuntimeError, match="sample 1 .*candidate 2"):
        mining.pick_candidates(np.array([[0.0, 1.0, 2.0], [0.0, 1.0, np.nan]]))
    with pytest.raises(ValueError, match="samples, candidates"):
        mining.pick_candidates(np.array([1.0, 2.0]))


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="generation.candidates"):
        mining.MiningSettings(0, 1).check(10)
    with pytest.raises(ValueError, match="generation.candidates"):
        mining.MiningSettings(True, 1).check(10)
    with pytest.raises(ValueError, match="generation.mining_steps"):
        mining.MiningSettings(4, 0).check(10)
    with pytest.raises(ValueError, match=r"generation.mining_steps \(10\) must be below generation.steps \(10\)"):
        mining.MiningSettings(4, 10).check(10)
    mining.MiningSettings(1, 9).check(10)
    with pytest.raises(ValueError, match="generation.guided.strength"):
        mining.GuidanceSettings(-1.0, (0.0, 0.5)).check()
    with pytest.raises(ValueError, match="generation.guided.window"):
        mining.GuidanceSettings(1.0, (0.5, 0.5)).check()
    with pytest.raises(ValueError, match="generation.guided.window"):
        mining.GuidanceSettings(1.0, (0.0,)).check()
    window = mining.GuidanceSettings(1.0, (0.0, 0.5))
    assert [window.active(i, 10) for i in range(10)] == [True] * 5 + [False] * 5


def test_scheduler_x0_needs_a_data_prediction() -> None:
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    with pytest.raises(ValueError, match="DDIMScheduler"):
        mining.scheduler_x0(DDIMScheduler())
    unipc = UniPCMultistepScheduler(predict_x0=False)
    unipc.model_outputs[-1] = torch.zeros(1)
    with pytest.raises(ValueError, match="UniPC"):
        mining.scheduler_x0(unipc)


def test_generate_shard_checks_the_mining_config(tiny_model, tmp_path: Path) -> None:
    base, lora = tiny_model
    table = _conditions(tmp_path, 2)
    with pytest.raises(ValueError, match="generation.mining_steps"):
        _generate(base, lora, table, 0, 1, tmp_path / "o", variant="mined", judge=lambda d: brightness,
                                mining=mining.MiningSettings(2, STEPS))
    with pytest.raises(ValueError, match="need a judge"):
        _generate(base, lora, table, 0, 1, tmp_path / "o", variant="mined",
                                mining=mining.MiningSettings(2, 1))
    assert not (tmp_path / "o").exists()  # nothing written before the check


# -------------------------------------------------------------------------------------------- mining
def test_mined_keeps_the_argmax_candidate_and_renders_it_as_plain(tiny_model, pipe, tmp_path: Path) -> None:
    base, lora = tiny_model
    table = _conditions(tmp_path, 3)
    candidates, batch = 3, 2
    score = Recording()
    manifest = _generate(base, lora, table, 0, 1, tmp_path / "mined", variant="mined", batch_size=batch,
                                       mining=mining.MiningSettings(candidates, 1), judge=lambda device: score)
    assert list(manifest.columns) == [*generate.MANIFEST_COLUMNS, "seed", "candidate", "mining_score"]
    # every candidate of every sample was scored exactly once, sample-major within each chunk ([c00 c01] [c02])
    assert len(score.values) == 3 * candidates
    table_scores = np.array(score.values).reshape(3, candidates)
    best = table_scores.argmax(axis=1)
    assert list(manifest["candidate"]) == best.tolist()
    assert np.allclose(manifest["mining_score"], table_scores.max(axis=1))
    assert (best != 0).any()  # not vacuous: some sample kept another noise than the plain one
    own = [sample_seed(sid, KW["seed"]) for sid in manifest["sample_id"]]
    assert list(manifest["seed"]) == [mining.candidate_seed(s, int(c)) for s, c in zip(own, best)]

    # the kept image is the plain pipeline's image of the kept noise, bit for bit (same chunks)
    render = generate.pipeline_renderer(pipe, prompt=PROMPT, resolution=RES, steps=STEPS, guidance_scale=1.0,
                                        condition_scale=1.0)
    rows = generate.read_conditions(table).set_index("sample_id")
    for chunk in generate.shard_chunks(rows.index, batch, 0, 1):
        conds = [generate.load_condition(rows.at[sid, "condition"], RES) for sid in chunk]
        seeds = manifest.set_index("sample_id").loc[chunk, "seed"]
        images = render(conds, [torch.Generator().manual_seed(int(s)) for s in seeds])
        for sid, image in zip(chunk, images):
            assert np.array_equal(read_rgb(tmp_path / "mined" / "images" / f"{sid}.png"), image), sid

    # the choice is recorded beside the image; a finished shard is reported from the records without the model
    record = json.loads((tmp_path / "mined" / "mining" / f"{manifest['sample_id'][0]}.json").read_text())
    assert record["candidate"] == best[0] and record["seed"] == manifest["seed"][0]
    again = _generate(base, tmp_path / "no-lora-needed.safetensors", table, 0, 1, tmp_path / "mined",
                                    variant="mined", batch_size=batch, mining=mining.MiningSettings(candidates, 1),
                                    judge=lambda device: score)
    pd.testing.assert_frame_equal(again, manifest)


def test_one_candidate_is_plain_bit_for_bit(tiny_model, tmp_path: Path) -> None:
    base, lora = tiny_model
    table = _conditions(tmp_path, 3)
    plain = _generate(base, lora, table, 0, 1, tmp_path / "plain", variant="plain", batch_size=2)
    mined = _generate(base, lora, table, 0, 1, tmp_path / "mined", variant="mined", batch_size=2,
                                    mining=mining.MiningSettings(1, 2), judge=lambda device: brightness)
    assert _digests(tmp_path / "plain" / "images") == _digests(tmp_path / "mined" / "images")
    assert (mined["candidate"] == 0).all() and list(mined["seed"]) == list(plain["seed"])


def test_mined_resume_rewrites_only_the_missing_image(tiny_model, tmp_path: Path) -> None:
    base, lora = tiny_model
    table = _conditions(tmp_path, 3)
    kwargs = dict(variant="mined", batch_size=2, mining=mining.MiningSettings(3, 1), judge=lambda d: brightness)
    first = _generate(base, lora, table, 0, 1, tmp_path / "out", **kwargs)
    reference = _digests(tmp_path / "out" / "images")
    (tmp_path / "out" / "images" / "c01.png").unlink()
    again = _generate(base, lora, table, 0, 1, tmp_path / "out", **kwargs)
    assert _digests(tmp_path / "out" / "images") == reference
    pd.testing.assert_frame_equal(again, first)


def test_mined_samples_do_not_depend_on_the_shard_count(tiny_model, tmp_path: Path) -> None:
    base, lora = tiny_model
    table = _conditions(tmp_path, 5)
    kwargs = dict(variant="mined", batch_size=2, mining=mining.MiningSettings(2, 1), judge=lambda d: brightness)
    one = _generate(base, lora, table, 0, 1, tmp_path / "one", **kwargs)
    two = pd.concat([_generate(base, lora, table, k, 2, tmp_path / "two", **kwargs) for k in range(2)])
    assert _digests(tmp_path / "one" / "images") == _digests(tmp_path / "two" / "images")
    pd.testing.assert_frame_equal(
        one.drop(columns=["image", "mask"]),
        two.sort_values("sample_id").reset_index(drop=True).drop(columns=["image", "mask"]),
    )


# ------------------------------------------------------------------------------------ the real judge
def _prototype(path: Path, spec, resolution: int, seed: int) -> None:
    from hardgen.scoring.features import load_backbone

    dim = load_backbone(spec).feature_dim
    prototype = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    metadata = {"real_mean_distance": "1.0", "real_std_distance": "0.5", "backbone": spec.name, "n": "8",
                "input_size": str(spec.input_size), "pad": "2", "resolution": str(resolution)}
    save_state_dict(path, {"prototype": prototype, "real_distances": torch.ones(8)}, metadata=metadata)


@pytest.fixture(scope="module")
def judge_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    from hardgen.scoring.features import BackboneSpec

    root = tmp_path_factory.mktemp("judge")
    backbones = {"cnn": {"name": "resnet18", "pretrained": False, "checkpoint": None, "input_size": 32},
                 "vit": {"name": "vit_tiny_patch16_224", "pretrained": False, "checkpoint": None, "input_size": 32}}
    prototypes = {}
    for seed, (key, entry) in enumerate(backbones.items()):
        prototypes[key] = root / f"{key}.safetensors"
        _prototype(prototypes[key], BackboneSpec.from_config(key, entry), RES, seed)
    return backbones, prototypes


def test_judge_is_the_hard_losss_distance_as_mean_z(judge_files) -> None:
    backbones, prototypes = judge_files
    judge = mining.load_judge(backbones, prototypes, resolution=RES, pad=2)
    images = torch.rand(3, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 1, RES, RES, dtype=torch.bool)
    masks[:, :, 4:12, 3:10] = True
    distances = judge.distances(images, masks)
    assert set(distances) == {"cnn", "vit"}
    expected = ((distances["cnn"] - 1.0) / 0.5 + (distances["vit"] - 1.0) / 0.5) / 2
    assert torch.allclose(judge(images, masks), expected)
    with pytest.raises(ValueError, match="resolution"):
        mining.load_judge(backbones, prototypes, resolution=2 * RES, pad=2)
    with pytest.raises(ValueError, match=r"\['vit'\]: no prototype"):
        mining.load_judge(backbones, {"cnn": prototypes["cnn"]}, resolution=RES, pad=2)


def test_guidance_raises_the_discrepancy_from_the_same_noise(pipe, judge_files) -> None:
    backbones, prototypes = judge_files
    judge = mining.load_judge(backbones, prototypes, resolution=RES, pad=2)
    sampling = generate.Sampling(PROMPT, RES, 6)
    masks, conditions = [], []
    for i in range(4):
        mask = np.zeros((RES, RES), bool)
        mask[2 + i: 11 + i, 3:13] = True
        masks.append(mask)
        edges = mask ^ np.pad(mask[1:-1, 1:-1], 1)
        conditions.append(np.repeat(edges[..., None].astype(np.uint8) * 255, 3, axis=2))

    def noise() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(100 + k) for k in range(4)]

    plain = generate.pipeline_renderer(pipe, prompt=PROMPT, resolution=RES, steps=6, guidance_scale=1.0,
                                       condition_scale=1.0)(conditions, noise())
    unguided = mining.guided_renderer(pipe, sampling, judge, mining.GuidanceSettings(0.0, (0.0, 0.5)))
    assert np.array_equal(unguided(conditions, noise(), masks), plain)  # strength 0 is the plain sampler
    guided = mining.guided_renderer(pipe, sampling, judge, mining.GuidanceSettings(1.0, (0.0, 0.5)))(
        conditions, noise(), masks)

    def discrepancy(images: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return judge(tensor, mining.masks_tensor(masks, torch.device("cpu"))).numpy()

    before, after = discrepancy(plain), discrepancy(guided)
    assert not np.array_equal(guided, plain)
    assert (after > before).all(), (before, after)


def test_guidance_through_an_upcast_fp16_vae(tiny_model) -> None:
    """An fp16 VAE with force_upcast (SD1.5's) decodes in fp32; the gradient must be taken before it is cast back."""
    base, lora = tiny_model
    half = generate.load_generation_pipeline(base, lora, device="cpu", dtype="float16")
    half.vae.register_to_config(force_upcast=True)
    masks = [np.zeros((RES, RES), bool) for _ in range(2)]
    for mask in masks:
        mask[3:12, 4:13] = True
    conditions = [np.repeat((m ^ np.pad(m[1:-1, 1:-1], 1))[..., None].astype(np.uint8) * 255, 3, axis=2)
                  for m in masks]
    render = mining.guided_renderer(half, generate.Sampling(PROMPT, RES, 3), brightness,
                                    mining.GuidanceSettings(1.0, (0.0, 1.0)))
    images = render(conditions, [torch.Generator().manual_seed(k) for k in range(2)], masks)
    assert images.shape == (2, RES, RES, 3) and half.vae.dtype == torch.float16  # restored after each step


@pytest.mark.parametrize(("change", "message"), [
    ({"candidates": 0}, "generation.candidates"),
    ({"mining_steps": 10}, "generation.mining_steps': 10 must be below generation.steps"),
    ({"per_mask": 0}, "generation.per_mask"),
    ({"allocation": "hardest"}, "generation.allocation"),
    ({"variants": ["plain", "guided"], "guided": {"strength": 1.0, "window": [0.6, 0.2]}}, "generation.guided.window"),
    ({"guided": {"strength": -1}}, "generation.guided.strength"),
])
def test_bad_generation_config_is_named(repo_root: Path, change: dict, message: str) -> None:
    from hardgen.config.validation import ConfigError, load_config, validate_config

    config = load_config([repo_root / "config" / "config.yaml"])
    validate_config(config)  # the demo itself is valid (mined with 2 of 10 steps)
    config["generation"].update(change)
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
