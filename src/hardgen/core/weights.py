"""Safe weight loading: safetensors, or ``torch.load(weights_only=True)``. Pickles are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hardgen.core.io import atomic_path


class WeightsError(ValueError):
    """A weight file that cannot be loaded as plain tensors; the message names the file."""


class UnsafeWeightsError(WeightsError):
    """A weight file that would need arbitrary code execution (a pickle) to load."""


class CorruptWeightsError(WeightsError):
    """A weight file that is not a readable safetensors / torch file: corrupt or truncated (e.g. a partial copy)."""


def load_state_dict(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load tensors from ``.safetensors`` or a plain-tensor ``.pt``/``.bin`` file.

    ``torch.load`` runs with ``weights_only=True``: a file carrying pickled objects raises
    :class:`UnsafeWeightsError` naming the file instead of executing anything. A file that cannot be read at all
    (truncated download, partial copy, not a weight file) raises :class:`CorruptWeightsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=str(device))
        except Exception as err:  # SafetensorError: bad or incomplete header, data not fully covered
            raise CorruptWeightsError(f"{path}: corrupt or truncated weight file ({err})") from err
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        # the weights_only unpickler refused an object (unsafe) vs. bytes that are no pickle stream (corrupt)
        if str(err).startswith("Weights only load failed") and "Unsupported operand" not in str(err):
            raise UnsafeWeightsError(f"{path}: refused to load (not plain tensors; {type(err).__name__})") from err
        raise CorruptWeightsError(f"{path}: corrupt or truncated weight file ({err})") from err
    except Exception as err:  # RuntimeError (zip reader, unexpected EOF), EOFError, KeyError on foreign bytes
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptWeightsError(f"{path}: corrupt or truncated weight file ({first_line})") from err
    if isinstance(obj, torch.Tensor):
        return {"tensor": obj}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnsafeWeightsError(f"{path}: expected a mapping of names to tensors")
    return obj


def save_state_dict(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
