"""Memory and communication formulas of the dry run: the parameter count against the real
module, and the per-GPU figures against hand calculations (docs/method.md)."""

from __future__ import annotations

import pytest
import torch

from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.parallel.estimates import (block_parameter_count, estimate_communication, estimate_memory,
                                     wan_parameter_count)
from ctxf.parallel.plan import plan
from ctxf.parallel.summary import describe_plan, projection_table


@pytest.mark.parametrize("preset, overrides", [
    ("tiny", []), ("tiny", ["model.patch_size=[1,4,4]", "model.in_channels=48", "model.out_channels=48",
                            "codec.pixel_patch=4"]),
    ("wan1.3b", [])])
def test_parameter_count_matches_the_module(preset, overrides):
    config = load_config(preset, overrides)
    with torch.device("meta"):
        model = WanDiT(config.model)
    assert wan_parameter_count(config.model) == sum(p.numel() for p in model.parameters())
    assert block_parameter_count(config.model) == sum(p.numel() for p in model.blocks[0].parameters())


def wan_64(*overrides: str):
    config = load_config("wan1.3b", ["train.global_batch_size=64", "train.precision=bf16",
                                     "parallel.context_parallel_degree=1", "parallel.teacher_shard_degree=1",
                                     *overrides])
    return config, plan(64, config)


def test_wan_at_64_gpus_matches_method_section_8():
    config, p = wan_64()
    memory = estimate_memory(config, p)
    params = wan_parameter_count(config.model)
    assert params == pytest.approx(1.42e9, rel=0.01)
    # 16 bytes/param over 64 GPUs, plus two gathered blocks
    assert memory.student == pytest.approx(16 * params / 64 + 2 * block_parameter_count(config.model) * 2)
    assert memory.teacher == pytest.approx(2 * params)  # replicated bf16 teacher: 2.6 GB at 1.3 B
    # 21 frames x 1560 tokens x (K, V) x 1536 x 30 layers x 2 bytes = 6.0 GB (docs/method.md, Slow-Fast Memory)
    assert memory.kv_cache == pytest.approx(6.04e9, rel=0.01)


def test_sharding_shrinks_what_it_should():
    config, p1 = wan_64()
    m1 = estimate_memory(config, p1)
    config4, p4 = wan_64("parallel.context_parallel_degree=4", "parallel.teacher_shard_degree=8")
    m4 = estimate_memory(config4, p4)
    assert m4.teacher == pytest.approx(m1.teacher / 8 + 2 * block_parameter_count(config.model))
    assert m4.teacher_forward_activations < m1.teacher_forward_activations / 2
    assert m4.critic_activations < m1.critic_activations / 2
    assert m4.student_activations == m1.student_activations  # the student is not sequence-sharded
    c1, c4 = estimate_communication(config, p1), estimate_communication(config4, p4)
    assert c1.teacher_context_parallel == 0 and c4.teacher_context_parallel > 0
    assert c1.teacher_gather == 0 and c4.teacher_gather == pytest.approx(2 * wan_parameter_count(config.model) * 7 / 8)
    assert c1.student_zero == c4.student_zero  # ZeRO-3 spans all ranks whatever the cp degree


def test_ring_beyond_the_head_count_is_counted():
    config, p = wan_64("parallel.context_parallel_degree=16")
    assert (p.ulysses_degree, p.ring_degree) == (4, 4)
    assert estimate_communication(config, p).teacher_context_parallel > 0


def test_reports_render():
    config, p = wan_64("parallel.context_parallel_degree=4")
    text = describe_plan(config, p)
    for needed in ("context_parallel (cp=4 = Ulysses 4 x ring 1)", "global 64 samples", "65,520 tokens",
                   "student model states", "KV cache", "DeepSpeed train_batch_size 256"):
        assert needed in text
    table = projection_table(config, 64, [1, 4, 16, 3])
    assert table.count("\n") == 5 and "| 16 (4 x 4) |" in table and "| 3 | impossible" in table


def test_full_history_teacher_shrinks_as_one_over_cp():
    # 480 latent frames = 2 minutes: 748,800 tokens; nothing d-wide covers the whole sequence, and the
    # ring's score matrices are chunked (forward) and recomputed (backward), so no S^2 term appears
    memories = {cp: estimate_memory(*wan_64(f"parallel.context_parallel_degree={cp}", "parallel.teacher_num_frames=480"))
                for cp in (1, 4, 8, 16)}
    for cp in (4, 8, 16):
        assert memories[cp].teacher_forward_activations < memories[1].teacher_forward_activations / cp * 1.1
    # the critic's ring steps keep O(S d / U) partials for backward, so it shrinks more slowly, but it shrinks
    assert memories[16].critic_activations < memories[8].critic_activations < memories[4].critic_activations
    assert memories[16].total < 40e9
