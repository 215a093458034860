"""Context parallelism is exact: at cp = 2, 3 and 4, Ulysses, ring and both, on a sequence none of
the degrees divides (5 frames x 5 x 5 = 125 tokens), the sharded model's output and its
parameter gradients equal the same model's on one process (float32). Both consumers are
checked: the gathered output, and a loss reduced over shards without gathering
(`ShardedOutput.take` / `sum_over_shards`). Ring attention runs in small query chunks here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from gloo_workers import run_workers

from ctxf.config import load_config
from ctxf.models.wan import WanDiT
from ctxf.parallel import ring
from ctxf.parallel.context_parallel import ContextParallelModel
from ctxf.parallel.plan import plan
from ctxf.parallel.topology import Topology

FRAMES, SIZE = 5, 10  # latent 10 x 10, patch 2 x 2: 25 tokens a frame, 125 in all
TOLERANCE = 1e-5


def _config(cp: int, ulysses: int):
    # 12 heads: Ulysses can take 2, 3 or 4 of them
    return load_config("tiny", [f"parallel.context_parallel_degree={cp}", f"parallel.ulysses_degree={ulysses}",
                                "model.num_heads=12", "model.head_dim=8", f"video.latent_height={SIZE}",
                                f"video.latent_width={SIZE}", "train.global_batch_size=1"])


def _inputs(config):
    generator = torch.Generator().manual_seed(7)
    m = config.model
    latents = torch.randn(2, m.in_channels, FRAMES, SIZE, SIZE, generator=generator)
    timestep = torch.rand(2, FRAMES, generator=generator) * 1000  # a noise level per frame, like [context | target]
    text = torch.randn(2, config.text.max_length, m.text_dim, generator=generator)
    weights = torch.randn(latents.shape, generator=generator)  # the loss is sum(out x weights)
    return latents, timestep, text, weights


def _gradient_errors(sharded: torch.nn.Module, reference: torch.nn.Module, cp: int) -> dict:
    """Relative error of the group's summed gradient / cp against the one-process gradient, per parameter."""
    errors = {}
    for (name, param), expected in zip(sharded.named_parameters(), reference.parameters()):
        grad = param.grad.clone()
        dist.all_reduce(grad)
        scale = max(1.0, expected.grad.abs().max().item())  # float32 sums of many terms: relative
        errors[name] = (grad / cp - expected.grad).abs().max().item() / scale
    return errors


def check_exact(cp: int, ulysses: int, num_frames_per_block: int | None) -> dict:
    config = _config(cp, ulysses)
    torch.manual_seed(0)
    model = WanDiT(config.model)
    latents, timestep, text, weights = _inputs(config)
    options = {"num_frames_per_block": num_frames_per_block}
    expected = model(latents, timestep, text, **options)
    (expected * weights).sum().backward()

    topology = Topology(plan(dist.get_world_size(), config))
    assert (topology.plan.ulysses_degree, topology.plan.ring_degree) == (ulysses, cp // ulysses)
    errors = {}

    gathered_model = ContextParallelModel(copy.deepcopy(model), topology.context_parallel)
    gathered_model.zero_grad()
    out = gathered_model(latents, timestep, text, **options)
    (out * weights).sum().backward()
    errors["gathered output"] = (out - expected).abs().max().item()
    errors.update({f"gathered grad {k}": v for k, v in _gradient_errors(gathered_model, model, cp).items()})

    sharded_model = ContextParallelModel(copy.deepcopy(model), topology.context_parallel)
    sharded_model.zero_grad()
    sharded = sharded_model(latents, timestep, text, gather_output=False, **options)
    assert sharded.local.shape[1] == -(-FRAMES * SIZE * SIZE // 4 // cp), "a rank holds more than its shard"
    partial = (sharded.local * sharded.take(weights))[:, sharded.valid].sum()
    loss = sharded.sum_over_shards(partial)
    loss.backward()
    errors["sharded loss"] = abs(loss.item() - (expected * weights).sum().item()) / abs(loss.item())
    errors.update({f"sharded grad {k}": v for k, v in _gradient_errors(sharded_model, model, cp).items()})
    return errors


def check_every_layout(cp: int, ulysses_degrees: list[int]) -> dict:
    ring.SCORE_ELEMENTS = 2 * 12 * 64 * 5  # about 5 queries per score matrix: ring attention runs in many chunks
    errors = {}
    for ulysses in ulysses_degrees:
        for num_frames_per_block in (None, 2):
            mode = "bidirectional" if num_frames_per_block is None else "block-causal"
            layout = f"Ulysses {ulysses} x ring {cp // ulysses}, {mode}"
            errors.update({f"{layout}: {k}": v for k, v in check_exact(cp, ulysses, num_frames_per_block).items()})
    return errors


@pytest.mark.parametrize("cp, ulysses_degrees", [(2, [2, 1]), (3, [3, 1]), (4, [4, 1, 2])], ids=["cp2", "cp3", "cp4"])
def test_sharded_model_equals_one_process(cp, ulysses_degrees):
    for rank, errors in enumerate(run_workers(cp, check_every_layout, cp, ulysses_degrees)):
        worst = max(errors.items(), key=lambda item: item[1])
        assert worst[1] <= TOLERANCE, f"rank {rank}: {worst[0]} differs by {worst[1]:.2e}"
