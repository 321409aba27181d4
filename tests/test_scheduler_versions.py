"""The UniPC sampler hardgen builds from SD1.5's scheduler config has the settings it had under the authors'
diffusers 0.29.2 (measured with benchmarks/unipc_versions.py, which runs both versions side by side: identical
timesteps, sigmas and solver steps; the values below are 0.29.2's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UniPCMultistepScheduler

SD15_SCHEDULER = Path(__file__).resolve().parents[1] / "resources" / "sd15-random" / "scheduler" / "scheduler_config.json"

#: UniPCMultistepScheduler.from_config(SD1.5's scheduler config).config under diffusers 0.29.2
CONFIG_0_29_2 = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "disable_corrector": [], "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero",
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True, "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False, "sample_max_value": 1.0, "set_alpha_to_one": False, "solver_order": 2,
    "solver_p": None, "solver_type": "bh2", "steps_offset": 1, "thresholding": False, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}
#: ... its timesteps at 10 steps, and the sum of three solver steps from seed 0 (x, eps ~ N(0, 1), 1x4x8x8)
TIMESTEPS_10_0_29_2 = [901, 811, 721, 631, 541, 451, 361, 271, 181, 91]
THREE_STEPS_0_29_2 = -33.6535

#: keys the pinned diffusers adds, each at the value that keeps 0.29.2's behaviour
NEWER_KEYS_OFF = {"use_beta_sigmas": False, "use_exponential_sigmas": False, "use_flow_sigmas": False,
                  "use_dynamic_shifting": False, "flow_shift": 1.0, "sigma_min": None, "sigma_max": None,
                  "shift_terminal": None}


def test_unipc_from_the_sd15_config_has_the_authors_diffusers_settings():
    scheduler = UniPCMultistepScheduler.from_config(json.loads(SD15_SCHEDULER.read_text()))
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    assert {k: config[k] for k in CONFIG_0_29_2} == CONFIG_0_29_2
    assert set(config) - set(CONFIG_0_29_2) <= set(NEWER_KEYS_OFF) | {"time_shift_type"}
    assert all(config[k] == v for k, v in NEWER_KEYS_OFF.items() if k in config)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == TIMESTEPS_10_0_29_2
    torch.manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for t in scheduler.timesteps[:3]:
        x = scheduler.step(eps, t, x).prev_sample
    assert float(x.double().sum()) == pytest.approx(THREE_STEPS_0_29_2, abs=1e-3)
