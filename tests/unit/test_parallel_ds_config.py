"""ds_configs/*.json completed from the training config: derived fields, forbidden fields."""

from __future__ import annotations

import json

import pytest

from ctxf.config import ConfigError, load_config
from ctxf.parallel.ds_config import DERIVED_FIELDS, REPO_ROOT, deepspeed_config
from ctxf.parallel.plan import plan


@pytest.mark.parametrize("name", ["zero3.json", "zero3_offload.json"])
def test_shipped_configs_get_their_batch_from_the_training_config(name):
    config = load_config("tiny", [f"parallel.ds_config=ds_configs/{name}", "train.global_batch_size=32",
                                  "train.micro_batch_size=2", "parallel.context_parallel_degree=2",
                                  "train.precision=bf16", "train.grad_clip=1.5"])
    p = plan(8, config)
    ds = deepspeed_config(config, p)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 32 // (2 * 4)
    # DeepSpeed's own rule, with every rank counted as data-parallel
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 8
    assert ds["gradient_clipping"] == 1.5 and ds["bf16"] == {"enabled": True}


@pytest.mark.parametrize("field", sorted(DERIVED_FIELDS))
def test_a_derived_field_in_the_json_is_refused(tmp_path, field):
    raw = json.loads((REPO_ROOT / "ds_configs/zero3.json").read_text())
    raw[field] = 1
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(raw))
    config = load_config("tiny", [f"parallel.ds_config={path}"])
    with pytest.raises(ConfigError, match=f"sets '{field}'; remove it"):
        deepspeed_config(config, plan(2, config))


def test_other_zero_stage_and_missing_file_are_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    config = load_config("tiny", [f"parallel.ds_config={path}"])
    with pytest.raises(ConfigError, match="need 3"):
        deepspeed_config(config, plan(2, config))
    config = load_config("tiny", ["parallel.ds_config=nowhere.json"])
    with pytest.raises(ConfigError, match="not found"):
        deepspeed_config(config, plan(2, config))


@pytest.mark.parametrize("preset, world", [("tiny", 2), ("wan1.3b", 64)])
def test_zero3_gathers_what_the_memory_estimate_assumes(preset, world):
    """The limits come from one block of the real module, and the dry run's estimate counts
    exactly the parameters ZeRO-3 may then hold gathered."""
    from ctxf.models.wan import WanDiT
    from ctxf.parallel.estimates import STATE_BYTES_PER_PARAM, estimate_memory, wan_parameter_count

    config = load_config(preset, ["parallel.ds_config=ds_configs/zero3.json"])
    if preset == "tiny":
        block = sum(p.numel() for p in WanDiT(config.model).blocks[0].parameters())
    else:  # Wan2.1-1.3B: q, k, v, o of self and cross attention, two RMS norms each, norm2, FFN, modulation
        d, f = 1536, 8960
        block = 2 * (4 * (d * d + d) + 2 * d) + 2 * d + (d * f + f) + (f * d + d) + 6 * d
    p = plan(world, config)
    zero = deepspeed_config(config, p)["zero_optimization"]
    assert zero["stage3_max_live_parameters"] == 2 * block
    assert zero["stage3_max_reuse_distance"] == block
    act = 2 if config.train.precision == "bf16" else 4
    states = STATE_BYTES_PER_PARAM * wan_parameter_count(config.model) / world
    assert estimate_memory(config, p).student == pytest.approx(states + zero["stage3_max_live_parameters"] * act)


@pytest.mark.parametrize("field", ["stage3_max_live_parameters", "stage3_max_reuse_distance"])
def test_a_zero_limit_in_the_json_is_refused(tmp_path, field):
    raw = json.loads((REPO_ROOT / "ds_configs/zero3.json").read_text())
    raw["zero_optimization"][field] = 10**9
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(raw))
    config = load_config("tiny", [f"parallel.ds_config={path}"])
    with pytest.raises(ConfigError, match=f"sets zero_optimization.{field}; remove it"):
        deepspeed_config(config, plan(2, config))
