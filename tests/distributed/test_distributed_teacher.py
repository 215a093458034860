"""The tiny DiT with its sequence sharded over context-parallel ranks against the same model on
one process (gloo): the frozen teacher's output (replicated and partitioned), a trainable
model's parameter gradients, and the teacher's parameter bytes per rank."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from gloo_workers import run_workers

from ctxf.config import load_config
from ctxf.memory.view import MemoryView
from ctxf.models.wan import WanDiT
from ctxf.parallel.context_parallel import ContextParallelModel
from ctxf.parallel.plan import plan
from ctxf.parallel.teacher import FrozenTeacher
from ctxf.parallel.topology import Topology

# (latent frames, latent height = width): 5 x 16 = 80 tokens divide by 2 and 4; 3 x 9 = 27 do not
SEQUENCES = [(5, 8), (3, 6)]


def _config(cp: int, teacher_shard: int, size: int, world: int):
    return load_config("tiny", [f"parallel.context_parallel_degree={cp}",
                                f"parallel.teacher_shard_degree={teacher_shard}",
                                f"video.latent_height={size}", f"video.latent_width={size}",
                                f"train.global_batch_size={world // cp}"])


def _inputs(config, frames: int, batch: int = 2):
    generator = torch.Generator().manual_seed(frames)
    m, v = config.model, config.video
    latents = torch.randn(batch, m.in_channels, frames, v.latent_height, v.latent_width, generator=generator)
    timestep = torch.rand(batch, frames, generator=generator) * 1000  # a noise level per frame
    text = torch.randn(batch, config.text.max_length, m.text_dim, generator=generator)
    return latents, timestep, text


def _model(config) -> WanDiT:
    torch.manual_seed(0)
    return WanDiT(config.model)


def check_teacher_output(cp: int, teacher_shards: list[int]) -> dict:
    errors = {}
    for frames, size in SEQUENCES:
        for teacher_shard in teacher_shards:
            config = _config(cp, teacher_shard, size, dist.get_world_size())
            model = _model(config)
            inputs = _inputs(config, frames)
            with torch.no_grad():
                expected = model(*inputs)
            teacher = FrozenTeacher(copy.deepcopy(model), Topology(plan(dist.get_world_size(), config)))
            errors[(frames * size * size // 4, teacher_shard)] = (teacher(*inputs) - expected).abs().max().item()
    return errors


def test_teacher_forward_sharded_over_two_ranks_equals_one_rank():
    for rank_errors in run_workers(2, check_teacher_output, 2, [1, 2]):
        worst = max(rank_errors.items(), key=lambda item: item[1])
        assert worst[1] <= 1e-5, f"(tokens, teacher_shard_degree) = {worst[0]}: error {worst[1]:.2e}"


def _memory(config, batch: int, frames: int, num_cached: int) -> MemoryView | None:
    """Cached keys/values of `num_cached` earlier frames, as the student's memory hands them over."""
    if not num_cached:
        return None
    generator = torch.Generator().manual_seed(2)
    m = config.model
    shape = (batch, num_cached * config.frame_seq_len, m.num_heads, m.head_dim)
    return MemoryView(keys=[torch.randn(shape, generator=generator) for _ in range(m.num_layers)],
                      values=[torch.randn(shape, generator=generator) for _ in range(m.num_layers)],
                      key_frame_positions=torch.arange(num_cached),
                      query_frame_positions=torch.arange(num_cached, num_cached + frames))


def check_gradients(cp: int, num_frames_per_block: int | None, num_cached: int) -> dict:
    errors = {}
    for frames, size in SEQUENCES:
        config = _config(cp, 1, size, dist.get_world_size())
        model = _model(config)
        inputs = _inputs(config, frames)
        weights = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))
        options = {"num_frames_per_block": num_frames_per_block,
                   "memory": _memory(config, inputs[0].shape[0], frames, num_cached)}

        expected = model(*inputs, **options)
        (expected * weights).sum().backward()

        sharded = ContextParallelModel(copy.deepcopy(model), Topology(plan(dist.get_world_size(), config))
                                       .context_parallel)
        sharded.zero_grad()
        out = sharded(*inputs, **options)
        (out * weights).sum().backward()
        errors[(frames, size, "out")] = (out - expected).abs().max().item()
        # every rank computed the whole sample's loss: the group's gradients add up to cp times it
        for (name, param), reference in zip(sharded.named_parameters(), model.parameters()):
            grad = param.grad.clone()
            dist.all_reduce(grad)
            scale = max(1.0, reference.grad.abs().max().item())  # float32 sums of many terms: relative
            errors[(frames, size, name)] = (grad / cp - reference.grad).abs().max().item() / scale
    return errors


@pytest.mark.parametrize("num_frames_per_block, num_cached", [(None, 0), (2, 0), (2, 3)],
                         ids=["bidirectional", "block-causal", "block-causal-with-memory"])
def test_sharded_model_gradients_add_up_to_the_single_process_gradient(num_frames_per_block, num_cached):
    for rank_errors in run_workers(2, check_gradients, 2, num_frames_per_block, num_cached):
        worst = max(rank_errors.items(), key=lambda item: item[1])
        assert worst[1] <= 1e-5, f"(frames, size, tensor) = {worst[0]}: error {worst[1]:.2e}"


def check_teacher_partition(teacher_shards: list[int]) -> dict:
    world = dist.get_world_size()
    held, errors = {}, {}
    frames, size = SEQUENCES[0]
    for teacher_shard in teacher_shards:
        config = _config(2, teacher_shard, size, world)
        model = _model(config)
        inputs = _inputs(config, frames)
        with torch.no_grad():
            expected = model(*inputs)
        teacher = FrozenTeacher(copy.deepcopy(model), Topology(plan(world, config)))
        held[teacher_shard] = teacher.held_parameter_bytes()
        errors[teacher_shard] = (teacher(*inputs) - expected).abs().max().item()
    return {"held": held, "errors": errors, "whole": sum(p.numel() * p.element_size() for p in model.parameters())}


def test_partitioned_teacher_holds_a_shrinking_share_of_its_parameters():
    for result in run_workers(4, check_teacher_partition, [1, 2, 4]):
        held, whole = result["held"], result["whole"]
        assert held[1] == whole
        for shards in (2, 4):
            # each rank holds 1/shards of every parameter, padded by at most one element per parameter
            assert held[shards] < held[1] / shards * 1.05, f"{shards} shards: {held[shards]} of {held[1]} bytes"
            assert held[shards] >= held[1] / shards
        assert max(result["errors"].values()) <= 1e-5, result["errors"]
