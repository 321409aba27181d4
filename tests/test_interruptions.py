"""A training process killed mid-run resumes from its last checkpoint and ends with the uninterrupted weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hardgen.data.conditioning import make_conditions, write_conditions_table
from hardgen.data.demo import make_demo_dataset
from hardgen.data.manifest import build_manifest, write_manifest
from hardgen.generator.train import TrainSettings
from hardgen.models.base_model import build_tiny_sd

# Two tiny training runs in subprocesses plus a kill and a resume: ~40 s on 2 cores, so `make test-all` only.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TESTSETS = ["CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"]
STEPS, EVERY = 30, 5


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    make_demo_dataset(work / "data", TESTSETS, n_train=6, n_test=1, min_size=48, max_size=64, seed=0)
    manifest = build_manifest(work / "data", TESTSETS)
    write_manifest(manifest, work / "manifest.csv")
    write_conditions_table(make_conditions(manifest, work / "conditions", "canny", 0, 32, 0), work / "conditions.csv")
    build_tiny_sd(REPO / "resources" / "tiny-sd", work / "base", seed=0)
    return work


def settings_file(inputs: Path, out_dir: Path) -> Path:
    settings = TrainSettings(
        base=str(inputs / "base"), conditions_csv=str(inputs / "conditions.csv"),
        manifest_csv=str(inputs / "manifest.csv"), out_dir=str(out_dir), resolution=32, prompt="polyp",
        steps=STEPS, batch_size=2, learning_rate=1e-3, checkpointing_steps=EVERY, checkpoints_total_limit=2,
        resume_from_checkpoint="latest", validation_samples=1, validation_inference_steps=1, seed=3,
    )
    path = out_dir.parent / f"{out_dir.name}.json"
    settings.to_json(path)
    return path


def train(settings: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hardgen.generator.train", "--settings", str(settings)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_training_resumes_from_checkpoint_with_identical_weights(inputs, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    assert train(settings_file(inputs, uninterrupted)).wait(timeout=600) == 0

    crashed = tmp_path / "crashed"
    settings = settings_file(inputs, crashed)
    process = train(settings)
    first = crashed / "checkpoints" / f"checkpoint-{EVERY}"
    deadline = time.monotonic() + 300
    while not first.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no cleanup, as on a node failure
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (crashed / "pytorch_lora_weights.safetensors").exists()

    rerun = train(settings)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-3000:]
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["resumed_from"] is not None and "checkpoint-" in str(summary["resumed_from"])
    resumed_step = int(str(summary["resumed_from"]).rsplit("-", 1)[1])
    assert EVERY <= resumed_step < STEPS

    expected = load_file(uninterrupted / "pytorch_lora_weights.safetensors")
    got = load_file(crashed / "pytorch_lora_weights.safetensors")
    assert expected.keys() == got.keys()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) < 1e-6
