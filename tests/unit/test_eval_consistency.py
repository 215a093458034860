"""Consistency metrics: weight-free ones against hand-computed values, and the feature path with tiny
randomly initialised DINOv2 and CLIP models saved to a temporary directory (nothing downloaded)."""

import json

import numpy as np
import pytest
import torch

from ctxf.eval import consistency
from ctxf.inference.video_writer import write_mp4


def video(values):
    """Frames of one grey level each, `[T, 8, 8, 3]` uint8."""
    return np.stack([np.full((8, 8, 3), v, np.uint8) for v in values])


def test_flicker_by_hand():
    assert consistency.flicker(video([100] * 5)) == 0.0
    assert consistency.flicker(video([0, 255, 0, 255])) == pytest.approx(1.0)
    half = video([0, 0, 0])
    half[1, :4] = 51  # half the pixels step up 0.2 then back down
    assert consistency.flicker(half) == pytest.approx(0.1)


def test_drift_compares_the_first_and_last_15_percent():
    ramp = video([10 * t for t in range(20)])  # 15% of 20 = 3 frames at each end: means 10 and 180
    result = consistency.drift(ramp)
    assert result["frames_compared"] == 3
    assert result["pixels"] == pytest.approx(170 / 255)
    assert result["colour"] == pytest.approx(170 / 255)
    tinted = video([100] * 20)
    tinted[-3:, :, :, 0] = 151  # only red rises by 51 at the end
    assert consistency.drift(tinted)["colour"] == pytest.approx(0.2 / np.sqrt(3))


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        consistency.weight_free_metrics(np.zeros((4, 8, 8, 3), np.float32))


def save_tiny_dinov2(path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)


def save_tiny_clip(path):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)


@pytest.mark.parametrize("save, kind", [(save_tiny_dinov2, "dinov2"), (save_tiny_clip, "clip_vision_model")])
def test_feature_consistency_with_a_tiny_local_model(tmp_path, save, kind):
    save(tmp_path)
    net = consistency.FeatureConsistency(str(tmp_path))
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    still = net(np.concatenate([a] * 4))
    assert still["model"] == kind
    assert still["to_first"] == pytest.approx(1.0, abs=1e-5) and still["to_previous"] == pytest.approx(1.0, abs=1e-5)
    cos_ab = net(np.concatenate([a, b]))["to_previous"]
    assert cos_ab < 0.9999, "two different random images have different features"
    alternating = net(np.concatenate([a, b, a, b]))  # to the first: cos(a,b), 1, cos(a,b); to the previous: cos(a,b)
    assert alternating["to_previous"] == pytest.approx(cos_ab, abs=1e-5)
    assert alternating["to_first"] == pytest.approx((2 * cos_ab + 1) / 3, abs=1e-5)
    assert alternating["score"] == pytest.approx((alternating["to_first"] + alternating["to_previous"]) / 2)


def test_command_line_on_a_video_file(tmp_path, capsys):
    path = write_mp4(torch.from_numpy(video([120] * 12 + [200] * 4)), tmp_path / "v.mp4", 4, 1)
    out = tmp_path / "metrics.json"
    assert consistency.main([str(path), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())[str(path)]
    assert metrics["num_frames"] == 16
    assert metrics["drift"]["pixels"] == pytest.approx(80 / 255, abs=0.02), "the last 2 frames are 80 levels brighter"
    assert metrics["features"] == {}


def test_command_line_refuses_a_missing_weights_directory(tmp_path, capsys):
    path = write_mp4(torch.from_numpy(video([120] * 4)), tmp_path / "v.mp4", 4, 1)
    assert consistency.main([str(path), "--weights", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err
