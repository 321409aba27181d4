"""Shard-safe, resumable generation: planning, resume and byte-identity, on a fake renderer and the tiny SD."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hardgen.core.io import (
    DataError,
    fit_square,
    read_mask,
    read_rgb,
    sample_seed,
    write_image,
    write_mask,
)
from hardgen.generator import generate
from hardgen.models.sampling import unit_to_uint8

RESOLUTION = 32


def _make_conditions(root: Path, n: int, size: tuple[int, int] = (40, 48), duplicate_first: bool = False) -> Path:
    """n conditions (canny-like RGB) with masks of another size; returns the conditions CSV."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sid = f"s{i:03d}"
        cond, mask = root / "conditions" / "images" / f"{sid}.png", root / "conditions" / "masks" / f"{sid}.png"
        edges = (rng.random(size) > 0.8).astype(np.uint8) * 255
        write_image(cond, np.repeat(edges[..., None], 3, axis=2))
        write_mask(mask, rng.random(size) > 0.5)
        rows.append({"sample_id": sid, "source_id": f"r{i}", "kind": "real", "condition": str(cond), "mask": str(mask)})
    if duplicate_first:  # two rows sharing one condition: only the per-sample seed tells them apart
        rows[1]["condition"] = rows[0]["condition"]
    table = root / "conditions" / "conditions.csv"
    pd.DataFrame(rows).sample(frac=1.0, random_state=1).to_csv(table, index=False)  # unsorted on purpose
    return table


def fake_renderer(calls: list[list[int]]) -> generate.RenderBatch:
    """Noise from each generator plus a term that depends on the whole batch (like batched kernels may)."""

    def render(conditions: list[np.ndarray], generators: list[torch.Generator], masks: list[np.ndarray]) -> np.ndarray:
        assert [m.shape for m in masks] == [(RESOLUTION, RESOLUTION)] * len(conditions) and masks[0].dtype == bool
        calls.append([int(c.sum()) for c in conditions])
        noise = np.stack([torch.rand(RESOLUTION, RESOLUTION, 3, generator=g).numpy() for g in generators])
        batch_term = np.mean([c.mean() for c in conditions]) / 255.0
        conds = np.stack(conditions).astype(np.float64) / 255.0
        return unit_to_uint8((noise + conds + batch_term) / 3.0)

    return render


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def _run_all_shards(table: Path, out: Path, n_shards: int, batch_size: int) -> pd.DataFrame:
    frames = [
        generate.run_shard(fake_renderer([]), table, k, n_shards, out, resolution=RESOLUTION, variant="plain",
                           seed=7, batch_size=batch_size)
        for k in range(n_shards)
    ]
    return pd.concat(frames, ignore_index=True)


def test_shard_chunks_partition_with_fixed_composition() -> None:
    ids = [f"id{i}" for i in (5, 3, 9, 1, 0, 7, 2, 8, 4, 6, 10)]
    one = generate.shard_chunks(ids, 3, 0, 1)
    assert one == [["id0", "id1", "id10"], ["id2", "id3", "id4"], ["id5", "id6", "id7"], ["id8", "id9"]]
    three = [generate.shard_chunks(ids, 3, k, 3) for k in range(3)]
    assert three[0] == [one[0], one[3]] and three[1] == [one[1]] and three[2] == [one[2]]
    with pytest.raises(ValueError, match="outside"):
        generate.shard_chunks(ids, 3, 3, 3)
    with pytest.raises(ValueError, match="batch_size"):
        generate.shard_chunks(ids, 0, 0, 1)


def test_run_shard_one_vs_three_shards_identical(tmp_path: Path) -> None:
    table = _make_conditions(tmp_path, 7)
    one = _run_all_shards(table, tmp_path / "one", 1, batch_size=2)
    three = _run_all_shards(table, tmp_path / "three", 3, batch_size=2)
    assert sorted(one["sample_id"]) == sorted(three["sample_id"]) == [f"s{i:03d}" for i in range(7)]
    assert _digests(tmp_path / "one" / "images") == _digests(tmp_path / "three" / "images")
    assert _digests(tmp_path / "one" / "masks") == _digests(tmp_path / "three" / "masks")
    # a different batch size changes batch composition, and this renderer is composition-sensitive:
    # the check above is therefore not vacuous
    _run_all_shards(table, tmp_path / "b3", 1, batch_size=3)
    assert _digests(tmp_path / "one" / "images") != _digests(tmp_path / "b3" / "images")


def test_run_shard_manifest_and_masks(tmp_path: Path) -> None:
    table = _make_conditions(tmp_path, 5)
    manifest = generate.run_shard(fake_renderer([]), table, 1, 2, tmp_path / "out", resolution=RESOLUTION,
                                  variant="hard", batch_size=2)
    assert list(manifest.columns) == ["sample_id", "image", "mask", "condition", "variant", "seed"]
    assert list(manifest["sample_id"]) == ["s002", "s003"]  # chunk 1 of [s000 s001][s002 s003][s004]
    assert list(manifest["seed"]) == [sample_seed("s002", 0), sample_seed("s003", 0)]
    assert (manifest["variant"] == "hard").all()
    conditions = pd.read_csv(table).set_index("sample_id")
    for row in manifest.itertuples():
        assert Path(row.image) == tmp_path / "out" / "images" / f"{row.sample_id}.png"
        assert read_rgb(row.image).shape == (RESOLUTION, RESOLUTION, 3)
        mask = read_mask(row.mask)
        assert mask.shape == (RESOLUTION, RESOLUTION)
        # the training transform of the source mask: short side, centre crop, nearest (strictly binary)
        source = read_mask(conditions.at[row.sample_id, "mask"])
        assert np.array_equal(mask, fit_square(source, RESOLUTION, is_mask=True))
        assert row.condition == conditions.at[row.sample_id, "condition"]


def test_run_shard_resume_only_missing(tmp_path: Path) -> None:
    table = _make_conditions(tmp_path, 6)
    out, reference = tmp_path / "out", tmp_path / "ref"
    _run_all_shards(table, reference, 1, batch_size=2)
    _run_all_shards(table, out, 1, batch_size=2)
    images = out / "images"
    old = {p.name: p.stat().st_mtime_ns for p in images.glob("*.png")}
    for p in images.glob("*.png"):  # push mtimes into the past so any rewrite is visible
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    (images / "s003.png").unlink()  # partial chunk [s002 s003]
    (out / "masks" / "s005.png").unlink()  # only a mask missing in chunk [s004 s005]
    calls: list[list[int]] = []
    generate.run_shard(fake_renderer(calls), table, 0, 1, out, resolution=RESOLUTION, variant="plain", seed=7,
                       batch_size=2)
    assert len(calls) == 1 and len(calls[0]) == 2  # only the partial chunk is re-rendered, as a whole
    for name in old:
        mtime = (images / name).stat().st_mtime_ns
        assert (mtime == 1_000_000_000) == (name != "s003.png"), name
    assert _digests(images) == _digests(reference / "images")
    assert _digests(out / "masks") == _digests(reference / "masks")
    assert not [p for p in images.iterdir() if p.name.startswith(".")]  # no temp files left


def test_per_sample_seeds_differ(tmp_path: Path) -> None:
    table = _make_conditions(tmp_path, 3, duplicate_first=True)
    generate.run_shard(fake_renderer([]), table, 0, 1, tmp_path / "out", resolution=RESOLUTION, variant="plain",
                       batch_size=4)
    a, b = read_rgb(tmp_path / "out/images/s000.png"), read_rgb(tmp_path / "out/images/s001.png")
    assert not np.array_equal(a, b)


def test_read_conditions_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv"):
        generate.read_conditions(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"sample_id": ["a", "a"], "condition": ["x", "y"], "mask": ["m", "n"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"bad.csv.*duplicate sample_id 'a'"):
        generate.read_conditions(bad)
    pd.DataFrame({"sample_id": ["a"], "mask": ["m"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match=r"bad.csv.*condition"):
        generate.read_conditions(bad)
    pd.DataFrame({"sample_id": ["../a"], "condition": ["x"], "mask": ["m"]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="file name"):
        generate.read_conditions(bad)


def test_merge_shards(tmp_path: Path) -> None:
    table = _make_conditions(tmp_path, 5)
    shard_csvs = []
    for k in range(2):
        frame = generate.run_shard(fake_renderer([]), table, k, 2, tmp_path / f"shard-{k}", resolution=RESOLUTION,
                                   variant="plain", batch_size=2)
        shard_csvs.append(tmp_path / f"shard-{k}.csv")
        frame.to_csv(shard_csvs[-1], index=False)
    merged = generate.merge_shards(shard_csvs, tmp_path / "manifest.csv", table)
    assert list(merged["sample_id"]) == [f"s{i:03d}" for i in range(5)]
    assert pd.read_csv(tmp_path / "manifest.csv").equals(merged)
    with pytest.raises(DataError, match="more than once"):
        generate.merge_shards([shard_csvs[0], shard_csvs[0]], tmp_path / "dup.csv")
    with pytest.raises(DataError, match="not generated"):
        generate.merge_shards(shard_csvs[:1], tmp_path / "partial.csv", table)
    assert not (tmp_path / "dup.csv").exists() and not (tmp_path / "partial.csv").exists()
    (tmp_path / "shard-1" / "images" / "s002.png").unlink()
    with pytest.raises(DataError, match="s002.png"):
        generate.merge_shards(shard_csvs, tmp_path / "m2.csv", table)


def test_merging_shards_imports_no_torch() -> None:
    # rule generated_manifest only merges CSVs: its imports (hardgen.generator.shards, stage_logging) must not pull in torch,
    # diffusers or timm (seconds of start-up per job); hardgen.generator.generate re-exports the same functions
    import subprocess
    import sys

    from hardgen.generator import shards
    code = ("import sys; from hardgen.generator.shards import merge_shards; from hardgen.core.logging_utils import stage_logging; "
            "print(sorted({'torch', 'diffusers', 'timm', 'transformers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(shards.__file__).parents[1])})
    assert result.stdout.strip() == "[]"
    assert generate.merge_shards is shards.merge_shards and generate.read_conditions is shards.read_conditions


def test_resolve_device_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    assert generate.resolve_device_dtype("cpu", None) == (torch.device("cpu"), torch.float32)
    assert generate.resolve_device_dtype("cpu", "bf16")[1] == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        generate.resolve_device_dtype("cpu", "fp8")
    assert generate.cpu_float16_supported()  # torch 2.x: fp16 sampling runs on the CPU (make paper-smoke does)
    generate.check_generation_dtype("cpu", "float16")
    with monkeypatch.context() as patch:  # a torch without the CPU kernels: an error, no silent fp32 fall-back
        patch.setattr(generate, "cpu_float16_supported", lambda: False)
        with pytest.raises(ValueError, match="generation.dtype: float16 needs a GPU"):
            generate.check_generation_dtype("cpu", "float16")
    generate.check_generation_dtype("cpu", None)  # auto: fp32 on the CPU
    generate.check_generation_dtype("cuda", "float16")
    assert generate.resolve_device_dtype("cuda", None)[1] == torch.float16  # auto: fp16 on a GPU, as the authors


# ------------------------------------------------------------------------------------ tiny SD model
# (fixture tiny_model: tests/conftest.py)
def _generate(base: Path, lora: Path, table: Path, k: int, n: int, out: Path, *, condition_scale: float = 1.0,
              **settings: object) -> pd.DataFrame:
    """generate_shard of plain shard ``k`` of ``n`` of the tiny model (16², 2 steps, seed 3, CPU)."""
    sampling = generate.Sampling("an endoscopic image of a colon polyp", 16, 2, condition_scale=condition_scale)
    return generate.generate_shard(generate.GenerationShard(base, lora, table, k, n, out, "plain"),
                                   generate.GenerationSettings(sampling, seed=3, device="cpu", **settings))


def test_generate_shard_tiny_sharding_resume_and_seeds(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    base, lora = tiny_model
    table = _make_conditions(tmp_path, 5, duplicate_first=True)
    one = _generate(base, lora, table, 0, 1, tmp_path / "one", batch_size=2)
    three = pd.concat([_generate(base, lora, table, k, 3, tmp_path / "three", batch_size=2)
                       for k in range(3)])
    assert list(one.columns) == ["sample_id", "image", "mask", "condition", "variant", "seed"]
    assert sorted(three["sample_id"]) == list(one["sample_id"]) == [f"s{i:03d}" for i in range(5)]
    reference = _digests(tmp_path / "one" / "images")
    assert len(reference) == 5 and reference == _digests(tmp_path / "three" / "images")
    images = [read_rgb(tmp_path / "one" / "images" / f"s{i:03d}.png") for i in range(5)]
    assert all(im.shape == (16, 16, 3) for im in images)
    assert images[0].std() > 0  # not a blank decode
    # s000 and s001 share one condition: only their per-sample seeds differ
    assert not np.array_equal(images[0], images[1])

    # resume: drop one image of chunk [s002 s003]; only it is rewritten, with the same bytes
    folder = tmp_path / "one" / "images"
    for p in folder.glob("*.png"):
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    (folder / "s002.png").unlink()
    _generate(base, lora, table, 0, 1, tmp_path / "one", batch_size=2)
    assert _digests(folder) == reference
    rewritten = sorted(p.name for p in folder.glob("*.png") if p.stat().st_mtime_ns != 1_000_000_000)
    assert rewritten == ["s002.png"]


def test_generate_shard_lora_and_condition_matter(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    base, lora = tiny_model
    table = _make_conditions(tmp_path, 2)
    kwargs = {"batch_size": 2}
    _generate(base, lora, table, 0, 1, tmp_path / "on", **kwargs)
    _generate(base, lora, table, 0, 1, tmp_path / "off", **{**kwargs, "condition_scale": 0.0})
    # condition_scale 0 switches the adapter off, so the LoRA (and the condition it reads) changes the images
    assert _digests(tmp_path / "on" / "images") != _digests(tmp_path / "off" / "images")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        _generate(base, tmp_path / "missing.safetensors", table, 0, 1, tmp_path / "x", **kwargs)


def test_fused_generation_equals_the_unfused_pipeline(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    """Generation merges the LoRA into the UNet once per shard; the images stay those of the unfused pipeline
    (measured: at most 1 grey level of 255 apart, float rounding of W + BA vs W x + B(A x))."""
    base, lora = tiny_model
    table = generate.read_conditions(_make_conditions(tmp_path, 4))
    conditions = [generate.load_condition(path, 32) for path in table["condition"]]
    images = {}
    for fuse in (True, False):
        pipe = generate.load_generation_pipeline(base, lora, device="cpu", dtype="float32", fuse=fuse)
        render = generate.pipeline_renderer(pipe, prompt="polyp", resolution=32, steps=3, guidance_scale=1.0,
                                            condition_scale=1.0)
        images[fuse] = render(conditions, [torch.Generator().manual_seed(k) for k in range(4)])
    diff = np.abs(images[True].astype(int) - images[False].astype(int))
    assert diff.max() <= 1 and images[True].std() > 0
    # and fusing really merged the weights: the fused UNet's adapted layers hold W + BA
    fused = generate.load_generation_pipeline(base, lora, device="cpu", dtype="float32", fuse=True).unet
    plain = generate.load_generation_pipeline(base, lora, device="cpu", dtype="float32", fuse=False).unet
    assert not torch.equal(fused.conv_in.weight, plain.conv_in.base_layer.weight)
    assert not hasattr(fused, "peft_config")  # the peft wrappers are gone: a stock UNet with a wider conv_in


def test_a_shared_condition_is_read_and_encoded_once_per_batch(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    """Samples of one condition (``per_mask`` > 1, ``mined``'s candidates) share one array, hence one VAE encode;
    the images stay those of separate copies (measured: identical bytes; the assert allows 1 grey level)."""
    table = _make_conditions(tmp_path, 3, duplicate_first=True)
    seen: list[list[np.ndarray]] = []

    def spy(conditions: list[np.ndarray], generators: list[torch.Generator], masks: list[np.ndarray]) -> np.ndarray:
        seen.append(conditions)
        return fake_renderer([])(conditions, generators, masks)

    generate.run_shard(spy, table, 0, 1, tmp_path / "out", resolution=RESOLUTION, variant="plain", batch_size=4)
    (chunk,) = seen  # s000, s001 (the same condition file), s002
    assert chunk[0] is chunk[1] and chunk[2] is not chunk[0]

    base, lora = tiny_model
    pipe = generate.load_generation_pipeline(base, lora, device="cpu", dtype="float32")
    render = generate.pipeline_renderer(pipe, prompt="polyp", resolution=RESOLUTION, steps=2, guidance_scale=1.0,
                                        condition_scale=1.0)
    encoded: list[int] = []
    pipe.vae.encoder.register_forward_hook(lambda module, args, out: encoded.append(args[0].shape[0]))
    shared = render(chunk, [torch.Generator().manual_seed(k) for k in range(3)])
    copies = render([chunk[0], chunk[0].copy(), chunk[2]], [torch.Generator().manual_seed(k) for k in range(3)])
    assert encoded == [2, 3]  # one VAE call per batch, over the distinct condition objects
    assert np.abs(shared.astype(int) - copies.astype(int)).max() <= 1 and shared.std() > 0


def test_guidance_7_5_is_classifier_free_guidance_against_the_empty_prompt(tiny_model: tuple[Path, Path]) -> None:
    """The authors' default guidance 7.5: each step runs the UNet on the empty prompt and on the prompt and
    extrapolates; guidance 1 runs the prompt alone."""
    base, lora = tiny_model
    pipe = generate.load_generation_pipeline(base, lora, device="cpu", dtype="float32")
    condition = np.zeros((RESOLUTION, RESOLUTION, 3), np.uint8)
    condition[8:20, 8:20] = 255
    batches: list[torch.Tensor] = []
    def record(module, args, kwargs, out):
        batches.append(kwargs["encoder_hidden_states"])

    hook = pipe.unet.register_forward_hook(record, with_kwargs=True)
    images = {}
    for scale in (7.5, 1.0):
        batches.clear()
        sampling = generate.Sampling("a polyp", RESOLUTION, 2, guidance_scale=scale)
        with torch.inference_mode():
            images[scale] = sampling(pipe, [condition], [torch.Generator().manual_seed(0)]).images
        if scale == 7.5:
            guided = [b.clone() for b in batches]
    hook.remove()
    empty, _ = pipe.encode_prompt("", torch.device("cpu"), 1, False)
    text, _ = pipe.encode_prompt("a polyp", torch.device("cpu"), 1, False)
    assert len(guided) == 2 and all(b.shape[0] == 2 for b in guided)  # two branches per step
    assert torch.allclose(guided[0][:1], empty) and torch.allclose(guided[0][1:], text)
    assert all(b.shape[0] == 1 for b in batches)  # guidance 1: the prompt alone
    assert not np.allclose(images[7.5], images[1.0])
