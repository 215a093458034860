"""Step directories: atomic visibility, verification, fallback to the previous complete step, pruning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ctxf.ckpt.training_checkpoint import (LATEST, find_resume_step, finalize_step, list_steps, partial_step_dir,
                                           prune_steps, resolve_step_dir, verify_step)
from ctxf.ckpt.wan_keys import CheckpointError


def _write_step(checkpoints: Path, step: int) -> Path:
    partial = partial_step_dir(checkpoints, step)
    (partial / "teacher" / "zero").mkdir(parents=True)
    (partial / "teacher" / "zero" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x" * (100 + step))
    (partial / "trainer").mkdir()
    (partial / "trainer" / "rank_00000.pt").write_bytes(b"state")
    return finalize_step(partial, {"step": step, "stage": "teacher", "roles": {"teacher": {}}})


def test_finalize_renames_and_moves_latest_last(tmp_path):
    final = _write_step(tmp_path, 10)
    assert final.name == "step_00000010" and not partial_step_dir(tmp_path, 10).exists()
    assert (tmp_path / LATEST).read_text().strip() == "step_00000010"
    manifest = verify_step(final)
    assert manifest["files"]["teacher/zero/zero_pp_rank_0_mp_rank_00_model_states.pt"] == 110


def test_an_unfinished_save_is_never_taken(tmp_path):
    good = _write_step(tmp_path, 10)
    partial = partial_step_dir(tmp_path, 20)
    partial.mkdir()
    (partial / "something.pt").write_bytes(b"half")
    assert find_resume_step(tmp_path) == good
    assert list_steps(tmp_path) == [good]  # .partial directories are not steps


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_damaged_latest_falls_back_to_the_previous_step(tmp_path, caplog, damage):
    older = _write_step(tmp_path, 10)
    newest = _write_step(tmp_path, 20)
    shard = newest / "teacher" / "zero" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    if damage == "truncate":
        shard.write_bytes(b"x" * 5)
    elif damage == "delete":
        shard.unlink()
    else:
        (newest / "manifest.json").unlink()
    named = shard.name if damage != "manifest" else "manifest.json"
    with caplog.at_level(logging.WARNING, logger="ctxf.ckpt"):
        assert find_resume_step(tmp_path) == older
    assert named in caplog.text
    with pytest.raises(CheckpointError, match=named):
        verify_step(newest)
    with pytest.raises(CheckpointError, match=named):
        resolve_step_dir(newest)


def test_latest_pointing_at_a_missing_step_falls_back(tmp_path):
    good = _write_step(tmp_path, 10)
    (tmp_path / LATEST).write_text("step_00000030\n")
    assert find_resume_step(tmp_path) == good
    assert resolve_step_dir(tmp_path) == good


def test_prune_keeps_the_newest_and_latest(tmp_path):
    for step in (10, 20, 30, 40):
        _write_step(tmp_path, step)
    removed = prune_steps(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["step_00000010", "step_00000020"]
    assert [p.name for p in list_steps(tmp_path)] == ["step_00000040", "step_00000030"]


def test_resolve_accepts_a_run_directory(tmp_path):
    step = _write_step(tmp_path / "checkpoints", 5)
    assert resolve_step_dir(tmp_path) == step
    with pytest.raises(CheckpointError, match="not a training step directory"):
        resolve_step_dir(tmp_path / "checkpoints" / "step_00000005" / "teacher")
