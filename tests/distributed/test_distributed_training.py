"""The trainer across gloo ranks: stage 0 with the teacher's sequence sharded over 2 context-parallel
ranks against the same steps on one process; a non-finite loss on one rank skips the step on every
rank and enough of them in a row abort; LoRA under ZeRO-3 leaves the base weights bit-identical."""

from __future__ import annotations

import math

import pytest
import torch
from gloo_workers import run_workers

from ctxf.config import load_config
from ctxf.data.default_shards import ensure_default_shards
from ctxf.parallel.engines import gather_parameters
from ctxf.parallel.plan import plan
from ctxf.train import build_trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Curtain shards made once here, so the ranks find them and never race to write them."""
    cache = tmp_path_factory.mktemp("curtain")
    overrides = [f"data.cache_dir={cache}", "data.default_clips=8"]
    shards = ensure_default_shards(load_config("tiny", overrides))
    return [f"data.shards={shards}"]


def _overrides(run_dir, data, *extra):
    return [*data, f"train.output_dir={run_dir}", "train.num_steps=3", "train.sample_every=0",
            "train.checkpoint_every=1000", "train.global_batch_size=1", *extra]


def train_and_gather(world_size: int, overrides: list[str], poisoned_steps: list[int]) -> dict:
    """Build this rank's trainer, poison rank 1's batch at `poisoned_steps`, train, gather the teacher."""
    import torch.distributed as dist

    from ctxf.trainer import TrainingAborted

    config = load_config("tiny", overrides)
    trainer = build_trainer(config, plan(world_size, config))
    train_step = trainer.method.train_step

    def maybe_poisoned(batch, step, micro):
        if dist.get_rank() == 1 and step + 1 in poisoned_steps:
            batch.latents = torch.full_like(batch.latents, math.nan)
        return train_step(batch, step, micro)

    trainer.method.train_step = maybe_poisoned
    engine = trainer.method.engines["teacher"]
    names = [name for name, _ in engine.module.named_parameters()]
    before = gather_parameters(engine.module, names)
    try:
        result = trainer.run()
        outcome = {"losses": result.losses, "skipped": result.skipped_steps, "error": None}
    except TrainingAborted as err:
        outcome = {"losses": None, "skipped": trainer.skipped_steps, "error": str(err)}
    trainable = {name for name, param in engine.module.named_parameters() if param.requires_grad}
    return {**outcome, "before": before, "after": gather_parameters(engine.module, names), "trainable": trainable}


def _assert_close(actual: dict, expected: dict, tolerance: float) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=tolerance, msg=name)


def test_context_parallel_stage0_matches_one_process(tmp_path, data):
    single = run_workers(1, train_and_gather, 1, _overrides(tmp_path / "cp1", data), [])[0]
    sharded = run_workers(2, train_and_gather, 2, _overrides(tmp_path / "cp2", data,
                                                             "parallel.context_parallel_degree=2"), [])
    assert single["losses"].keys() == {1, 2, 3}
    for rank in sharded:
        assert rank["losses"].keys() == single["losses"].keys()
        for step, loss in single["losses"].items():
            assert rank["losses"][step] == pytest.approx(loss, abs=1e-5), step
        _assert_close(rank["after"], single["after"], 1e-5)
    moved = max((single["after"][n] - single["before"][n]).abs().max().item() for n in single["after"])
    assert moved > 1e-3  # the comparison above is about trained weights, not the initial ones


def test_nonfinite_loss_on_one_rank_skips_the_step_on_all(tmp_path, data):
    ranks = run_workers(2, train_and_gather, 2,
                        _overrides(tmp_path / "run", data, "train.global_batch_size=2", "train.num_steps=1"), [1])
    for rank in ranks:
        assert rank["error"] is None and rank["skipped"] == 1
        _assert_close(rank["after"], rank["before"], 0.0)  # the step was skipped everywhere
    assert math.isnan(ranks[0]["losses"][1])  # the logged loss is the mean over ranks: it shows the NaN


def test_nonfinite_steps_in_a_row_abort_naming_step_rank_and_value(tmp_path, data):
    ranks = run_workers(2, train_and_gather, 2,
                        _overrides(tmp_path / "run", data, "train.global_batch_size=2", "train.max_bad_steps=2"),
                        [2, 3])
    for rank in ranks:
        assert rank["skipped"] == 2
        assert rank["error"] is not None
        assert "step 3: non-finite rank 1 loss nan" in rank["error"]
        assert "train.max_bad_steps=2" in rank["error"]


def test_lora_under_zero3_trains_only_adapters(tmp_path, data):
    ranks = run_workers(2, train_and_gather, 2,
                        _overrides(tmp_path / "run", data, "train.global_batch_size=2", "lora.rank=4"), [])
    for rank in ranks:
        assert rank["trainable"] and all(".lora_" in name for name in rank["trainable"])
        frozen = [name for name in rank["before"] if name not in rank["trainable"]]
        assert frozen and all(torch.equal(rank["after"][name], rank["before"][name]) for name in frozen)
        assert any(not torch.equal(rank["after"][name], rank["before"][name]) for name in rank["trainable"])
