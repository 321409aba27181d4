"""GPU assignment for local multi-GPU runs: each job sees only the device(s) it claimed.

SLURM already sets ``CUDA_VISIBLE_DEVICES`` per job. On a workstation Snakemake only counts a global ``gpu``
resource; which physical GPU a job uses is decided here, with one lock file per device so that concurrent jobs
never share one. Locks are released when the process exits, even if it crashes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def count_gpus() -> int:
    """Number of NVIDIA GPUs on this machine, without initialising CUDA (0 when there is no driver)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


@contextlib.contextmanager
def claim_gpus(
    count: int, total: int | None = None, lock_dir: str | Path | None = None
) -> Iterator[list[int]]:
    """Claim ``count`` free GPUs, export them as ``CUDA_VISIBLE_DEVICES`` and yield their indices.

    Does nothing (yields ``[]``) when ``count`` is 0, when there are no GPUs, or when a scheduler already set
    ``CUDA_VISIBLE_DEVICES``. Must run before torch initialises CUDA.
    """
    if count <= 0 or "CUDA_VISIBLE_DEVICES" in os.environ:
        yield []
        return
    total = count_gpus() if total is None else total
    if total == 0:
        yield []
        return
    if count > total:
        raise RuntimeError(f"job asks for {count} GPUs but this machine has {total}")
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / f"hardgen-gpu-locks-{os.getuid()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    handles = []
    try:
        for index in range(total):
            handle = open(lock_dir / f"gpu-{index}.lock", "w")  # noqa: SIM115 - held until release
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handles.append((index, handle))
            if len(handles) == count:
                break
        if len(handles) < count:
            raise RuntimeError(
                f"only {len(handles)} of {count} GPUs are free; limit concurrent GPU jobs with the "
                "profile's `resources: gpu=<number of GPUs>`"
            )
        claimed = [index for index, _ in handles]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, claimed))
        yield claimed
    finally:
        for _, handle in handles:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def configure_torch(threads: int) -> str:
    """Limit torch to the job's ``threads`` and return ``cuda`` when a GPU is visible, else ``cpu``.

    Snakemake schedules jobs by their declared threads; torch would otherwise start one thread per core in every
    job, and oversubscribed CPU jobs run several times slower. Imports torch: call after :func:`claim_gpus`.
    """
    import torch

    torch.set_num_threads(max(1, int(threads)))
    return "cuda" if torch.cuda.is_available() else "cpu"
