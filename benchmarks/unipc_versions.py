"""Does the UniPC sampler that hardgen builds equal the authors' under their diffusers (0.29.2)?

hardgen samples with ``UniPCMultistepScheduler.from_config(<the base's scheduler config>)``, as the authors' gen.py
does, but under the pinned diffusers. This script builds that scheduler from SD1.5's scheduler config
(``resources/sd15-random/scheduler``: SD1.5's betas, ``steps_offset``, ``timestep_spacing``) under two diffusers
installs and prints what differs: the settings, the timesteps and sigmas at 10, 20 and 50 steps, and three steps of
the solver on fixed tensors. Install the other version beside the pinned one without touching the venv::

    .venv/bin/python -m pip install --no-deps --target /tmp/d029 diffusers==0.29.2
    .venv/bin/python benchmarks/unipc_versions.py /tmp/d029

Measured 2026-12-08 (diffusers 0.42.1 pinned vs 0.29.2): the same timesteps, sigmas and solver outputs; the pinned
config only adds keys whose defaults are off (``use_flow_sigmas``, ``use_beta_sigmas``, ``use_exponential_sigmas``,
``use_dynamic_shifting``, ``flow_shift`` 1, ``sigma_min/max`` and ``shift_terminal`` null, ``time_shift_type``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "resources" / "sd15-random" / "scheduler" / "scheduler_config.json"

PROBE = f"""
import json, diffusers, torch
from diffusers import UniPCMultistepScheduler
s = UniPCMultistepScheduler.from_config(json.loads(open({str(CONFIG)!r}).read()))
out = {{"version": diffusers.__version__, "config": {{k: v for k, v in dict(s.config).items() if not k.startswith("_")}}}}
for n in (10, 20, 50):
    s.set_timesteps(n)
    torch.manual_seed(0)
    x, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for t in s.timesteps[:3]:
        x = s.step(eps, t, x).prev_sample
    s.set_timesteps(n)
    out[n] = {{"timesteps": s.timesteps.tolist(), "sigmas": [round(float(v), 7) for v in s.sigmas],
              "three_steps": round(float(x.double().sum()), 5)}}
print(json.dumps(out, default=str))
"""


def probe(extra_path: str | None) -> dict:
    env = None if extra_path is None else {"PYTHONPATH": extra_path, "PATH": ""}
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    pinned, other = probe(None), probe(sys.argv[1])
    print(f"diffusers {pinned['version']} (pinned) vs {other['version']} ({sys.argv[1]})")
    for key in sorted(set(pinned["config"]) | set(other["config"])):
        a, b = pinned["config"].get(key, "<absent>"), other["config"].get(key, "<absent>")
        if a != b:
            print(f"  config {key}: {a} vs {b}")
    same = all(pinned[n] == other[n] for n in ("10", "20", "50"))
    print("timesteps, sigmas and three solver steps at 10 / 20 / 50 steps:", "identical" if same else "DIFFER")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
