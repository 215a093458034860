"""ZeRO-3 student and critic engines (two in one process) against a single-process AdamW step on
the same global batch. The workers' weights are read back with DeepSpeed's own consolidation
(`zero_to_fp32`) and their averaged gradients with `safe_get_full_grad`: the weight check alone
could not see a wrong gradient scale, because Adam's first step does not depend on it.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from deepspeed.utils import safe_get_full_grad
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from gloo_workers import run_workers

from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.parallel.context_parallel import ContextParallelModel
from ctxf.parallel.engines import build_engine
from ctxf.parallel.topology import Topology

# the student uses the plain ZeRO-3 config, the critic the CPU-offload one
DS_CONFIGS = {"student": "ds_configs/zero3.json", "critic": "ds_configs/zero3_offload.json"}
SEEDS = {"student": 0, "critic": 1}
FRAMES = 3


def _config(cp: int, role: str, global_batch: int, precision: str = "fp32"):
    return load_config("tiny", [
        f"parallel.context_parallel_degree={cp}", f"parallel.ds_config={DS_CONFIGS[role]}", f"train.precision={precision}",
        f"train.global_batch_size={global_batch}", "train.micro_batch_size=1",
        "train.student_lr=1e-3", "train.critic_lr=2e-3", "train.weight_decay=0.1",
        "train.grad_clip=0.05",  # small enough to clip, so clipping is checked too
    ])


def _model(config, role: str) -> WanDiT:
    torch.manual_seed(SEEDS[role])
    return WanDiT(config.model)


def _batch(config, size: int):
    generator = torch.Generator().manual_seed(123)
    m, v = config.model, config.video
    latents = torch.randn(size, m.in_channels, FRAMES, v.latent_height, v.latent_width, generator=generator)
    timestep = torch.rand(size, generator=generator) * 1000
    text = torch.randn(size, config.text.max_length, m.text_dim, generator=generator)
    target = torch.randn(latents.shape, generator=generator)
    return latents, timestep, text, target


def _loss(engine, latents, timestep, text, target, reduce_over_shards: bool) -> torch.Tensor:
    """The mean squared error, from the gathered output or summed over this rank's tokens and reduced
    over the context-parallel group (ShardedOutput), as a critic may."""
    dtype = engine.module.proj_out.weight.dtype  # bf16 under train.precision=bf16; timesteps stay fp32
    if not reduce_over_shards:
        out = engine(latents.to(dtype), timestep, text.to(dtype))
        return torch.nn.functional.mse_loss(out.float(), target)
    out = engine(latents.to(dtype), timestep, text.to(dtype), gather_output=False)
    partial = (out.local.float() - out.take(target)).square()[:, out.valid].sum()
    return out.sum_over_shards(partial) / target.numel()


def train_one_step(checkpoint_dir: str, cp: int, global_batch: int, precision: str = "fp32",
                   reduce_over_shards: bool = False) -> dict:
    topology = Topology.build(_config(cp, "student", global_batch, precision))
    engines = {}
    for role in DS_CONFIGS:
        config = _config(cp, role, global_batch, precision)
        model = _model(config, role)
        engines[role] = build_engine(ContextParallelModel(model, topology.context_parallel) if cp > 1 else model,
                                     role, config, topology)
    latents, timestep, text, target = _batch(config, global_batch)
    plan = topology.plan
    grads = {}
    for micro_step in range(plan.gradient_accumulation_steps):
        index = topology.data_parallel_rank * plan.gradient_accumulation_steps + micro_step
        sample = slice(index, index + 1)
        for role, engine in engines.items():
            engine.backward(_loss(engine, latents[sample], timestep[sample], text[sample], target[sample],
                                  reduce_over_shards))
            if engine.is_gradient_accumulation_boundary():
                grads[role] = {name: safe_get_full_grad(p).float().clone()
                                for name, p in engine.module.named_parameters()}
            engine.step()
    for role, engine in engines.items():
        engine.save_checkpoint(f"{checkpoint_dir}/{role}")
    return {"grads": grads, "train_batch_size": {role: e.train_batch_size() for role, e in engines.items()},
            "engines_distinct": engines["student"] is not engines["critic"],
            "steps": {role: e.global_steps for role, e in engines.items()}}


def _single_process_step(role: str, cp: int, global_batch: int):
    """Oracle: the same model, one torch AdamW step on the mean loss over the whole global batch."""
    config = _config(cp, role, global_batch)
    model = _model(config, role)
    latents, timestep, text, target = _batch(config, global_batch)
    torch.nn.functional.mse_loss(model(latents, timestep, text), target).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    torch.optim.AdamW(model.parameters(), lr=getattr(config.train, f"{role}_lr"),
                      betas=tuple(getattr(config.train, f"{role}_betas")),
                      weight_decay=config.train.weight_decay).step()
    return grads, {name: p.detach() for name, p in model.named_parameters()}


def _max_error(got: dict, want: dict) -> tuple[str, float]:
    assert got.keys() == want.keys()
    return max(((name, (got[name].float() - want[name]).abs().max().item()) for name in want), key=lambda x: x[1])


@pytest.mark.parametrize("cp, global_batch, reduce_over_shards", [(1, 4, False), (2, 2, False), (2, 2, True)],
                         ids=["data-parallel", "context-parallel", "context-parallel-loss-over-shards"])
def test_zero3_step_on_two_ranks_equals_single_process_adamw(tmp_path, cp, global_batch, reduce_over_shards):
    results = run_workers(2, train_one_step, str(tmp_path), cp, global_batch, "fp32", reduce_over_shards)
    for result in results:
        assert result["engines_distinct"] and result["steps"] == {"student": 1, "critic": 1}
        # DeepSpeed counts a sample once per rank holding it (see ctxf/parallel/engines.py)
        assert result["train_batch_size"] == {"student": global_batch * cp, "critic": global_batch * cp}
    for role in DS_CONFIGS:
        expected_grads, expected_weights = _single_process_step(role, cp, global_batch)
        for rank, result in enumerate(results):
            name, error = _max_error(result["grads"][role], expected_grads)
            assert error <= 1e-5, f"{role} rank {rank}: gradient of {name} off by {error:.2e}"
        weights = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / role))
        name, error = _max_error(weights, expected_weights)
        assert error <= 1e-5, f"{role}: consolidated {name} off by {error:.2e} after one step"
        moved = max((expected_weights[n] - _model(_config(cp, role, global_batch), role).state_dict()[n]).abs().max()
                    for n in expected_weights)
        assert moved > 1e-4, "the step did not move the weights: the comparison would prove nothing"


def test_bf16_engines_with_context_parallelism_step(tmp_path):
    """The bf16 path (CUDA's): engines run in bf16 with fp32 master weights; the averaged gradients
    match the fp32 single-process ones to bf16 precision."""
    results = run_workers(2, train_one_step, str(tmp_path), 2, 2, "bf16")
    for role in DS_CONFIGS:
        expected_grads, _ = _single_process_step(role, 2, 2)
        for result in results:
            assert result["steps"][role] == 1
            for name, grad in result["grads"][role].items():
                # bf16 weights and activations: a few percent; a wrong gradient scale would be 50-100 %
                relative = (grad - expected_grads[name]).norm() / expected_grads[name].norm().clamp_min(1e-8)
                assert relative <= 0.1, f"{role} {name}: relative gradient error {relative:.3f}"
        weights = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / role))
        assert all(torch.isfinite(w).all() for w in weights.values())
