"""The distillation section's rules: one clear error naming the field and the fix."""

from __future__ import annotations

import pytest

from ctxf.config import ConfigError, load_config


@pytest.mark.parametrize("preset, overrides, message", [
    ("tiny_local_dmd", ["distill.window_frames=8"], "distill.window_frames=8 is not a whole number of chunks"),
    ("tiny_context_dmd", ["distill.rollout_frames_start=30", "distill.rollout_frames_end=27"],
     "rollout_frames_start (30) <= rollout_frames_end (27)"),
    ("tiny_context_dmd", ["distill.min_rollout_frames=6"], "window_frames (9) <= min_rollout_frames (6)"),
    ("tiny_context_dmd", ["distill.teacher_context=everything"], "distill.teacher_context='everything': choose"),
    ("tiny_local_dmd", ["distill.min_timestep=990"], "need 0 <= min < max <= 1000"),
    ("tiny_local_dmd", ["distill.generator_every=0"], "distill.generator_every=0 must be positive"),
    ("tiny_ode_init", ["data.num_frames=9"], "ode_init reads whole trajectories; set data.num_frames=0"),
    ("tiny_context_dmd", ["memory.rope_length=27"], "set memory.rope_length >= 30"),
    ("tiny_longlive", ["distill.prefix_frames=10"], "distill.prefix_frames=10 is not a whole number of chunks"),
    ("tiny_local_dmd", ["distill.prefix_frames=-3"], "distill.prefix_frames=-3 must be >= 0"),
    ("tiny", ["data.default_max_gap=-1"], "data.default_max_gap=-1 must be >= 0"),
])
def test_bad_distill_settings(preset, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(preset, overrides)
    assert message in str(err.value)


def test_presets_load_and_the_stage_is_the_named_one():
    for stage in ("ode_init", "local_dmd", "context_dmd", "self_forcing", "longlive"):
        assert load_config(f"tiny_{stage}").train.stage == stage
        assert load_config(f"wan1.3b_{stage}").train.stage == stage
    # a full-history teacher is not bound by the student's RoPE range
    assert load_config("tiny_context_dmd", ["memory.rope_length=24", "distill.teacher_context=full"])
