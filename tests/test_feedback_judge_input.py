"""feedback.judge_input: the feedback judge sees x̂0 at segment.size (hardgen's default) or as generated (the
authors' SegFormer gets the 512² x̂0), read by the feedback LoRA's training alone."""

from __future__ import annotations

import pytest
import torch
from test_stages import settings_for

from hardgen.config.settings import Settings
from hardgen.config.validation import load_config
from hardgen.core.weights import save_state_dict
from hardgen.generator.objectives import FeedbackJudge
from hardgen.generator.train_settings import TrainSettings
from hardgen.segmentation.build import SegmenterSpec, build_segmenter
from hardgen.segmentation.losses import structure_loss_per_sample

SPEC = {"arch": "Unet", "encoder": "tu-test_resnet", "encoder_weights": None}
GENERATED = 64  # the generator's resolution
SEGMENT_SIZE = 32


def _judge(tmp_path, **overrides) -> tuple[FeedbackJudge, list[tuple[int, ...]]]:
    """A real-trained-judge stand-in (random Unet) and the input shapes its forward receives."""
    weights = tmp_path / "seg.safetensors"
    if not weights.is_file():
        torch.manual_seed(0)
        save_state_dict(weights, build_segmenter(SegmenterSpec.from_config(SPEC, "cnn")).state_dict())
    values = dict(base="b", conditions_csv="c", manifest_csv="m", out_dir=str(tmp_path / "o"), mode="feedback",
                  fresh_start=True, resolution=GENERATED, segmenter=SPEC, segmenter_weights=str(weights),
                  segment_size=SEGMENT_SIZE)
    settings = TrainSettings(**{**values, **overrides})
    settings.validate()
    judge = FeedbackJudge(settings, torch.device("cpu"))
    seen: list[tuple[int, ...]] = []
    judge.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    return judge, seen


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, GENERATED, GENERATED, generator=generator)
    masks = torch.zeros(2, 1, GENERATED, GENERATED)
    masks[..., 16:44, 20:40] = 1
    return images, masks


def test_the_judge_sees_segment_size_by_default_and_the_generated_size_with_generated(tmp_path):
    images, masks = _batch()
    resized, resized_seen = _judge(tmp_path)
    as_generated, generated_seen = _judge(tmp_path, judge_input="generated")
    default_losses = resized.losses(images, masks)
    generated_losses = as_generated.losses(images, masks)
    assert resized_seen == [(2, 3, SEGMENT_SIZE, SEGMENT_SIZE)]
    assert generated_seen == [(2, 3, GENERATED, GENERATED)]
    # generated: the judge's structure loss on x̂0 and its mask as they are (no resize)
    with torch.no_grad():
        expected = structure_loss_per_sample(as_generated.model((images - as_generated.mean) / as_generated.std),
                                             masks)
    assert torch.allclose(generated_losses, expected, atol=1e-6)
    assert not torch.allclose(default_losses, generated_losses)


def test_judge_input_is_checked(tmp_path):
    with pytest.raises(ValueError, match="TrainSettings.judge_input"):
        _judge(tmp_path, judge_input="full")
    with pytest.raises(ValueError, match="TrainSettings.judge_input.*multiple of 32"):
        _judge(tmp_path, judge_input="generated", resolution=48)


def test_judge_input_reaches_only_the_feedback_training(repo_root, tmp_path):
    demo = load_config([repo_root / "config" / "config.yaml"])
    paper = load_config([repo_root / "config" / "config.yaml", repo_root / "config" / "paper.yaml"])
    assert demo["feedback"]["judge_input"] == "segment_size" and paper["feedback"]["judge_input"] == "generated"
    assert settings_for(demo, "feedback", tmp_path).judge_input == "segment_size"
    generated = {**demo, "feedback": {**demo["feedback"], "judge_input": "generated"}}
    assert settings_for(generated, "feedback", tmp_path).judge_input == "generated"
    # a param of the feedback LoRA's training only: no other job reads it
    settings = Settings.from_config(generated)
    assert settings.feedback.params("feedback")["judge_input"] == "generated"
    assert settings.feedback.keys()["judge_input"].metadata["read_by"] == ("feedback",)
