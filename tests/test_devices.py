"""GPU claiming for local multi-GPU runs: concurrent jobs never share a device."""

from __future__ import annotations

import os

import pytest

from hardgen.core.devices import claim_gpus


@pytest.fixture(autouse=True)
def no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_two_jobs_get_different_gpus(tmp_path):
    with claim_gpus(1, total=2, lock_dir=tmp_path) as first:
        assert os.environ["CUDA_VISIBLE_DEVICES"] == str(first[0])
        os.environ.pop("CUDA_VISIBLE_DEVICES")  # the second job is another process with its own environment
        with claim_gpus(1, total=2, lock_dir=tmp_path) as second:
            assert first != second and sorted(first + second) == [0, 1]
            os.environ.pop("CUDA_VISIBLE_DEVICES")
            with pytest.raises(RuntimeError, match="free"):
                with claim_gpus(1, total=2, lock_dir=tmp_path):
                    pass
    # released: all free again
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    with claim_gpus(2, total=2, lock_dir=tmp_path) as both:
        assert both == [0, 1]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_scheduler_assignment_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with claim_gpus(1, total=4, lock_dir=tmp_path) as claimed:
        assert claimed == []
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_no_gpus_or_cpu_job_is_a_no_op(tmp_path):
    with claim_gpus(1, total=0, lock_dir=tmp_path) as claimed:
        assert claimed == []
    with claim_gpus(0, total=4, lock_dir=tmp_path) as claimed:
        assert claimed == []
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_too_many_requested(tmp_path):
    with pytest.raises(RuntimeError, match="asks for 3 GPUs"):
        with claim_gpus(3, total=2, lock_dir=tmp_path):
            pass
