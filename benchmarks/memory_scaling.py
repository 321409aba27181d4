"""Peak memory of the streaming stages (scoring, generation, evaluation) at two dataset sizes.

Each measurement runs in a fresh subprocess and reports its peak resident set size, so the figures are what a
Snakemake job of that stage would use. Streaming means the peak does not grow with the number of images.

    python benchmarks/memory_scaling.py --sizes 16 128 --workdir /tmp/hardgen-mem

Prints one line per stage and size, then the growth per stage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTSETS = ["CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"]

# Each stage runs as `python -c STAGE_CODE[stage] <workdir> <n>` in its own process.
STAGE_CODE = {
    "score": """
import sys, pandas as pd, torch
from hardgen.scoring.features import BackboneSpec
from hardgen.scoring.score import score_variant
torch.set_num_threads(1)
work, n = sys.argv[1], int(sys.argv[2])
spec = BackboneSpec(name="resnet18", input_size=64)
score_variant(f"{work}/data-{n}/manifest.csv", {"cnn": spec}, {"cnn": f"{work}/proto.safetensors"},
              "real", f"{work}/scores-{n}.csv", batch_size=8)
""",
    "generate": """
import sys, torch
from hardgen.generator.generate import GenerationSettings, GenerationShard, generate_shard
from hardgen.models.sampling import Sampling
torch.set_num_threads(1)
work, n = sys.argv[1], int(sys.argv[2])
generate_shard(GenerationShard(f"{work}/base", f"{work}/lora", f"{work}/data-{n}/conditions.csv", 0, 1,
                               f"{work}/gen-{n}", "plain"),
               GenerationSettings(Sampling("polyp", 64, 4), batch_size=8, device="cpu"))
""",
    "evaluate": """
import sys, pandas as pd, torch
from hardgen.data.manifest import load_manifest
from hardgen.segmentation.predict import evaluate_segmenter
from hardgen.segmentation.build import SegmenterSpec, build_segmenter
torch.set_num_threads(1)
work, n = sys.argv[1], int(sys.argv[2])
manifest = load_manifest(f"{work}/data-{n}/manifest.csv")
model = build_segmenter(SegmenterSpec(arch="Unet", encoder="resnet18")).eval()
evaluate_segmenter(model, manifest[manifest["split"] != "train"], size=64, pred_root=f"{work}/maps-{n}", batch_size=8)
""",
}


def prepare(work: Path, sizes: list[int]) -> None:
    """Datasets of each size, a prototype, a tiny SD and a gaussian-init Control-LoRA (random but valid)."""
    import torch

    from hardgen.data.conditioning import make_conditions, write_conditions_table
    from hardgen.data.demo import make_demo_dataset
    from hardgen.data.manifest import build_manifest, write_manifest
    from hardgen.models.base_model import build_tiny_sd, load_components
    from hardgen.models.control_lora import (
        add_control_lora,
        save_control_lora,
        widen_conv_in,
    )
    from hardgen.scoring.features import BackboneSpec, compute_prototype

    for n in sizes:
        root = work / f"data-{n}"
        make_demo_dataset(root / "pranet", TESTSETS, n_train=n, n_test=max(1, n // 5), min_size=96, max_size=160,
                          seed=0)
        manifest = build_manifest(root / "pranet", TESTSETS)
        write_manifest(manifest, root / "manifest.csv")
        write_conditions_table(make_conditions(manifest, root / "conditions", "canny", 0, 64, 0),
                               root / "conditions.csv")
    compute_prototype(build_manifest(work / f"data-{sizes[0]}" / "pranet", TESTSETS),
                      BackboneSpec(name="resnet18", input_size=64), work / "proto.safetensors")
    build_tiny_sd(REPO / "resources" / "tiny-sd", work / "base", seed=0)
    unet = load_components(str(work / "base"), dtype=torch.float32)["unet"]
    widen_conv_in(unet, 1)
    add_control_lora(unet, "condition", "half_skip_attn", 16, 64)
    save_control_lora(work / "lora", unet, "condition")


def peak_rss_mib(stage: str, work: Path, n: int) -> float:
    """Run one stage in a child process; its peak RSS in MiB.

    Read from ``VmHWM`` in /proc (KiB), which starts afresh with the child's own address space; ``ru_maxrss``
    would carry over the parent's high-water mark through fork.
    """
    code = (
        STAGE_CODE[stage]
        + "\nimport re\nprint(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(work), str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[16, 128], help="two training-set sizes")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hardgen-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.sizes)
    print(f"# peak RSS per stage (MiB), workdir {work}")
    results = {}
    for stage in STAGE_CODE:
        for n in args.sizes:
            results[stage, n] = peak_rss_mib(stage, work, n)
            images = n if stage != "evaluate" else 5 * max(1, n // 5)
            print(f"{stage:9s} images={images:4d} peak_rss_mib={results[stage, n]:8.1f}")
    for stage in STAGE_CODE:
        small, large = (results[stage, n] for n in args.sizes)
        print(f"{stage:9s} growth {large - small:+.1f} MiB for {args.sizes[1] // args.sizes[0]}x the images")


if __name__ == "__main__":
    main()
