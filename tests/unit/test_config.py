"""Config loading: presets, overrides, and errors that name the problem (acceptance 6)."""

import pytest

from ctxf.config import ConfigError, available_presets, load_config


def test_presets_load_and_derive_geometry():
    assert {"tiny", "wan1.3b"} <= set(available_presets())
    tiny = load_config("tiny")
    assert tiny.frame_seq_len == (8 // 2) * (8 // 2)
    wan = load_config("wan1.3b")
    # Wan2.1-T2V-1.3B (docs/method.md, base model): 60 x 104 latents, patch 2 -> 30 x 52 = 1560 tokens; 12 heads x 128 = 1536
    assert wan.frame_seq_len == 1560
    assert wan.model.dim == 1536


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["model.num_layers=4", "memory.surprise_threshold=0.9", "train.student_lr=2e-6",
                               "diffusion.denoising_steps=[1000, 500]", "inference.prompt=a cat"])
    assert cfg.model.num_layers == 4
    assert cfg.memory.surprise_threshold == pytest.approx(0.9)
    assert cfg.train.student_lr == pytest.approx(2e-6)
    assert cfg.diffusion.denoising_steps == [1000, 500]
    assert cfg.inference.prompt == "a cat"


@pytest.mark.parametrize("override, words", [
    ("model.num_layer=4", ["model.num_layer", "did you mean model.num_layers"]),
    ("modle.num_layers=4", ["modle", "did you mean model"]),
    ("model.num_layers=four", ["model.num_layers", "expects int", "four"]),
    ("train.student_lr=fast", ["train.student_lr", "expects float", "fast"]),
    ("model.patch_size=3", ["model.patch_size", "expects a list"]),
    ("model=3", ["model is a section"]),
    ("num_layers", ["section.key=value"]),
])
def test_unknown_or_mistyped_keys_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("override, words", [
    ("video.latent_height=7", ["video.latent_height=7", "not divisible"]),
    ("memory.rope_length=10", ["memory.rope_length=10", ">= 24"]),
    ("memory.policy=lru", ["memory.policy='lru'", "slow_fast"]),
    ("diffusion.denoising_steps=[250, 500]", ["diffusion.denoising_steps", "decreasing"]),
    ("codec.pixel_patch=4", ["codec.pixel_patch=4", "model.in_channels=12"]),
    ("model.head_dim=7", ["model.head_dim=7", "even"]),
    ("train.precision=fp16", ["train.precision", "fp16"]),
    ("data.num_frames=20", ["data.num_frames=20", "multiple of 3"]),
    ("data.num_workers=-1", ["data.num_workers=-1", ">= 0"]),
])
def test_cross_field_errors_name_field_and_fix(override, words):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    for word in words:
        assert word in str(err.value)


def test_malformed_yaml_file_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layers: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(str(not_mapping))
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")


def test_yaml_file_can_extend_a_preset(tmp_path):
    custom = tmp_path / "mine.yaml"
    custom.write_text("base: tiny\nmodel:\n  num_layers: 3\nmemory:\n  policy: full\n")
    cfg = load_config(str(custom))
    assert cfg.model.num_layers == 3 and cfg.memory.policy == "full" and cfg.model.num_heads == 2
