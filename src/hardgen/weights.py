"""Safe weight loading: safetensors, or ``torch.load(weights_only=True)``. Pickles are refused."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hardgen.io import atomic_path


class UnsafeWeightsError(ValueError):
    """A weight file that would need arbitrary code execution (a pickle) to load."""


def load_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load tensors from ``.safetensors`` or a plain-tensor ``.pt``/``.bin`` file.

    ``torch.load`` runs with ``weights_only=True``: a file carrying pickled objects raises
    :class:`UnsafeWeightsError` naming the file instead of executing anything.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path), device=str(device))
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError depending on version
        raise UnsafeWeightsError(f"{path}: refused to load (not plain tensors; {type(err).__name__})") from err
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeWeightsError(f"{path}: expected a mapping of names to tensors")
    return obj


def save_state_dict(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
