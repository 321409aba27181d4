"""Multi-process training, executed: N processes × batch 1 train what 1 process × N accumulation steps trains.

The slow tests launch ``hardgen.generator.train`` under ``accelerate launch --multi_gpu --num_processes 2`` as the
workflow does (one process per GPU), on the CPU (``ACCELERATE_USE_CPU=1``: gloo), and compare its LoRA with the
1-process run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import _test_backbones, make_settings, tiny_base, tiny_data  # noqa: F401 (the fixtures)

from hardgen.core.weights import load_state_dict
from hardgen.generator.train import (
    LORA_WEIGHTS_NAME,
    ResumableBatchSampler,
    TrainSettings,
    sample_draws,
)

#: max abs difference allowed between the LoRA weights of the 2-process and the 1-process runs: the same images and
#: draws, the same probe-grid sum; only the gradient mean is formed otherwise (gloo all-reduce vs accumulation).
#: Measured on CPU (torch 2.14, gloo): 0 (bitwise equal) for the plain, hard and resumed runs.
ATOL = 1e-6


# ------------------------------------------------------------------------------------------ fast: the draws
def test_a_samples_draws_depend_on_seed_and_position_alone():
    """Split over processes or accumulation steps, in any batch, a sample draws the same timestep, prompt drop,
    noise and posterior eps."""
    kwargs = dict(latent_shape=(4, 3, 5), num_train_timesteps=1000, empty_prompt_prob=0.5, draw_condition=True)
    whole = sample_draws(7, range(8), **kwargs)
    for parts in ([[0, 1, 2, 3], [4, 5, 6, 7]], [[k] for k in range(8)], [[0, 2, 4, 6], [1, 3, 5, 7]]):
        drawn = [sample_draws(7, part, **kwargs) for part in parts]
        order = [k for part in parts for k in part]
        for field in ("timesteps", "drop_prompt", "noise", "image_eps", "condition_eps"):
            joined = torch.cat([getattr(d, field) for d in drawn])
            assert torch.equal(joined[np.argsort(order)], getattr(whole, field)), field
    assert whole.drop_prompt.any() and not whole.drop_prompt.all()
    assert len(set(whole.timesteps.tolist())) > 1 and not torch.equal(whole.noise[0], whole.noise[1])
    assert not torch.equal(whole.noise, whole.image_eps) and not torch.equal(whole.image_eps, whole.condition_eps)
    other = sample_draws(8, range(8), **kwargs)
    assert not torch.equal(other.noise, whole.noise)
    # the condition's draw comes last: leaving it out changes none of the others
    without = sample_draws(7, range(8), **{**kwargs, "draw_condition": False})
    assert without.condition_eps is None and torch.equal(without.noise, whole.noise)
    assert torch.equal(without.image_eps, whole.image_eps) and torch.equal(without.timesteps, whole.timesteps)


def test_processes_take_their_slice_of_each_global_batch():
    """Optimiser step k: 2 processes × batch 1 (micro-step k) hold the positions and pairs that 1 process × 2
    accumulation steps (micro-steps 2k, 2k+1) holds."""
    single = ResumableBatchSampler(5, 1, seed=3)
    shards = [ResumableBatchSampler(5, 1, seed=3, num_processes=2, process_index=p) for p in (0, 1)]
    for step in range(6):
        assert [list(single.positions(2 * step + j)) for j in (0, 1)] == [list(s.positions(step)) for s in shards]
        assert [single.batch(2 * step + j) for j in (0, 1)] == [s.batch(step) for s in shards]


# ------------------------------------------------------------------------------------------ slow: executed
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(settings: TrainSettings, processes: int) -> Path:
    """Run the training entry point in a subprocess; with ``processes > 1`` under the workflow's ``accelerate launch
    --multi_gpu`` (:func:`hardgen.generator.stages.run_training`), on the CPU (``ACCELERATE_USE_CPU``: gloo)."""
    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    settings.to_json(settings_path)
    module = ["-m", "hardgen.generator.train", "--settings", str(settings_path)]
    launch = [] if processes == 1 else [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, *launch, *module], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    assert json.loads((out / "summary.json").read_text())["num_processes"] == processes
    return out


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_state_dict(a / LORA_WEIGHTS_NAME), load_state_dict(b / LORA_WEIGHTS_NAME)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _same_runs(a: Path, b: Path) -> float:
    """Assert equal LoRAs (``ATOL``) and train logs; returns the weights' max abs difference."""
    diff = _max_diff(a, b)
    print(f"{a.name} vs {b.name}: LoRA max abs diff {diff:.3g}")
    assert diff <= ATOL
    log_a, log_b = pd.read_csv(a / "train_log.csv"), pd.read_csv(b / "train_log.csv")
    assert list(log_a["step"]) == list(log_b["step"])
    np.testing.assert_allclose(log_a[["loss", "mse", "extra"]], log_b[["loss", "mse", "extra"]], rtol=1e-5, atol=1e-7)
    return diff


def _plain(request: pytest.FixtureRequest, out: Path, **overrides) -> TrainSettings:
    """Plain settings on test_train's tiny base and data: batch 1, fresh condition draws, ``overrides``."""
    common = dict(steps=3, batch_size=1, learning_rate=5e-3, condition_latent="sample", validation_samples=1)
    base, data = request.getfixturevalue("tiny_base"), request.getfixturevalue("tiny_data")
    return make_settings(base, data, out, **{**common, **overrides})


@pytest.mark.slow
def test_two_processes_train_the_plain_lora_of_one_process_with_two_accumulation_steps(request, tmp_path):
    one = _train(_plain(request, tmp_path / "one", gradient_accumulation_steps=2), processes=1)
    two = _train(_plain(request, tmp_path / "two"), processes=2)
    lone = _train(_plain(request, tmp_path / "lone"), processes=1)  # 1 image per step: another run
    _same_runs(one, two)
    assert _max_diff(one, lone) > 1e3 * ATOL


@pytest.mark.slow
def test_two_processes_train_the_hard_lora_of_one_process_with_two_accumulation_steps(request, tmp_path):
    """Hard mode: the margins calibrated on the probe grid and the L_dis gradients agree too."""
    init = _train(_plain(request, tmp_path / "plain", steps=1), processes=1)
    backbones, prototypes = _test_backbones(tmp_path)
    hard = dict(mode="hard", init_lora=str(init / LORA_WEIGHTS_NAME), backbones=backbones, prototypes=prototypes,
                crop_pad=2, calibration_samples=4, margin_factor=1.5, steps=2)
    one = _train(_plain(request, tmp_path / "one", gradient_accumulation_steps=2, **hard), processes=1)
    two = _train(_plain(request, tmp_path / "two", **hard), processes=2)
    _same_runs(one, two)
    summaries = [json.loads((out / "summary.json").read_text()) for out in (one, two)]
    for key in backbones:
        assert summaries[0]["margins"][key] == pytest.approx(summaries[1]["margins"][key], rel=1e-6)
    assert pd.read_csv(one / "train_log.csv")["extra"].iloc[0] > 0  # the hinge is active: L_dis is compared


@pytest.mark.slow
def test_a_two_process_run_interrupted_and_resumed_equals_the_uninterrupted_one(request, tmp_path):
    common = dict(steps=4, checkpointing_steps=2)
    full = _train(_plain(request, tmp_path / "full", **common), processes=2)
    # "killed" after step 2: a 2-step run leaves checkpoint-2, then the resumed run continues to 4
    _train(_plain(request, tmp_path / "resumed", **{**common, "steps": 2}), processes=2)
    resumed = _train(_plain(request, tmp_path / "resumed", **common, resume_from_checkpoint="latest"),
                     processes=2)
    assert json.loads((resumed / "summary.json").read_text())["resumed_from"].endswith("checkpoint-2")
    _same_runs(full, resumed)
