"""Weight files that cannot be read say "corrupt or truncated" (and name the file); only real pickles are "unsafe"."""

from __future__ import annotations

import pytest
import torch

from hardgen.core.weights import (
    CorruptWeightsError,
    UnsafeWeightsError,
    WeightsError,
    load_state_dict,
    save_state_dict,
)


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file_is_corrupt_not_unsafe(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_state_dict(path, {"w": torch.ones(1000)})
    else:
        torch.save({"w": torch.ones(1000)}, path)
    _truncate(path)
    with pytest.raises(CorruptWeightsError, match=rf"weights\{suffix}: corrupt or truncated") as info:
        load_state_dict(path)
    assert not isinstance(info.value, UnsafeWeightsError) and "unsafe" not in str(info.value).lower()


@pytest.mark.parametrize("content", [b"", b"not a weight file at all" * 8])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_empty_or_foreign_bytes_are_corrupt(tmp_path, suffix, content):
    path = tmp_path / f"foreign{suffix}"
    path.write_bytes(content)
    with pytest.raises(CorruptWeightsError, match="corrupt or truncated"):
        load_state_dict(path)


def test_legacy_torch_format_truncated_is_corrupt(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CorruptWeightsError, match="legacy.pt: corrupt or truncated"):
        load_state_dict(_truncate(path))


def test_pickles_stay_unsafe_and_both_are_weights_errors(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "extra": Payload()}, path)
    with pytest.raises(UnsafeWeightsError, match="evil.pt: refused to load") as info:
        load_state_dict(path)
    assert isinstance(info.value, WeightsError) and issubclass(CorruptWeightsError, WeightsError)
    assert "pwned" not in capsys.readouterr().out
