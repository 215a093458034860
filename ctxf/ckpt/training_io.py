"""Saving and restoring a whole training step: every engine, EMA and LoRA files, and each rank's
trainer state, into the layout of training_checkpoint.py. Every rank calls these together."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ctxf.ckpt.training_checkpoint import (DEEPSPEED_TAG, finalize_step, partial_step_dir, prune_steps,
                                           remove_stale_partials, trainer_state_path, verify_step)
from ctxf.ckpt.wan_keys import CheckpointError
from ctxf.models.lora import is_adapter_key
from ctxf.parallel.engines import gather_parameters
from ctxf.parallel.step_sync import barrier


def save_training_step(checkpoints_dir: Path, step: int, method, emas: dict, trainer_state: dict, *, rank: int,
                       manifest: dict, keep: int) -> Path:
    """Write step `step`; returns the step directory (complete and pointed to by `latest`)."""
    checkpoints_dir = Path(checkpoints_dir)
    partial = partial_step_dir(checkpoints_dir, step)
    if rank == 0:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(checkpoints_dir)
        partial.mkdir()
    barrier()
    for role, engine in method.engines.items():
        engine.save_checkpoint(str(partial / role), tag=DEEPSPEED_TAG)
    for role, ema in emas.items():
        full = ema.gather_full()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in full.items()}, partial / f"{role}_ema.safetensors")
    for role, lora in method.lora_roles.items():
        _save_lora(checkpoints_dir, partial, role, lora, method.engines[role].module, rank)
    path = trainer_state_path(partial, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trainer_state, path)
    barrier()
    final = partial.with_name(partial.name.removesuffix(".partial"))
    if rank == 0:
        roles = {role: {"lora": method.lora_roles.get(role), "ema": role in emas} for role in method.engines}
        finalize_step(partial, {"step": step, "roles": roles, **manifest})
        prune_steps(checkpoints_dir, keep)
    barrier()
    return final


def _save_lora(checkpoints_dir: Path, partial: Path, role: str, lora: dict, module, rank: int) -> None:
    import json

    names = [name for name, _ in module.named_parameters()]
    adapter = gather_parameters(module, [n for n in names if is_adapter_key(n)])
    base_file = checkpoints_dir / f"{role}_base.safetensors"
    write_base = not lora["base"] and not base_file.exists()
    base = gather_parameters(module, [n for n in names if not is_adapter_key(n)]) if write_base else None
    if rank == 0:
        save_file(adapter, partial / f"{role}_lora.safetensors")
        (partial / f"{role}_lora.json").write_text(json.dumps(
            {**lora, "base": lora["base"] or f"../{base_file.name}"}, indent=2))
        if base is not None:
            save_file(base, base_file)


def load_training_step(step_dir: Path, method, *, rank: int, world_size: int) -> dict:
    """Restore every engine of `method` from `step_dir`; returns this rank's trainer state."""
    step_dir = Path(step_dir)
    manifest = verify_step(step_dir)
    if manifest.get("world_size") != world_size:
        raise CheckpointError(f"{step_dir} was written by {manifest.get('world_size')} ranks and this job has "
                              f"{world_size}; resume with the same number of ranks")
    missing = sorted(set(method.engines) - set(manifest["roles"]))
    if missing:
        raise CheckpointError(f"{step_dir} holds roles {sorted(manifest['roles'])}, not {missing}: it was written by "
                              f"stage {manifest.get('stage')!r}; start this stage from it with "
                              f"train.init_checkpoint instead of resuming")
    for role, engine in method.engines.items():
        loaded, _ = engine.load_checkpoint(str(step_dir / role), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=False, load_module_strict=True)
        if loaded is None:
            raise CheckpointError(f"DeepSpeed could not load {step_dir / role}")
    return torch.load(trainer_state_path(step_dir, rank), weights_only=True)
