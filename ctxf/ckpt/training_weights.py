"""Model weights out of a training step directory (see training_checkpoint.py for the layout).

    read_training_step(path, "teacher")        the teacher role, consolidated, its LoRA merged
    read_training_step(path, "student_ema")    the student's EMA weights

`ZeroCheckpoint` (zero_consolidate.py) consolidates the ZeRO-3 partitions as DeepSpeed's own
`get_fp32_state_dict_from_zero_checkpoint` does (frozen parameters included) but loads the shard
files with `weights_only=True`; an adapter is folded into its base weights, so what comes out is
a plain `WanDiT` state dict in diffusers names.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctxf.ckpt.checkpoint_files import read_safetensors
from ctxf.ckpt.training_checkpoint import DEEPSPEED_TAG, resolve_step_dir, verify_step
from ctxf.ckpt.wan_keys import CheckpointError, StateDict
from ctxf.models.lora import merge_state_dict, split_adapter


def split_role_key(key: str | None, manifest: dict, source: Path) -> tuple[str, bool]:
    """(role, ema) from "teacher", "student_ema", ... (None: the step's default role)."""
    roles = manifest.get("roles", {})
    key = key or manifest.get("default_role") or next(iter(roles), "")
    ema = key.endswith("_ema")
    role = key[: -len("_ema")] if ema else key
    if role not in roles:
        raise CheckpointError(f"{source} holds roles {sorted(roles)}, not {role!r}; choose one (add _ema for its "
                              f"EMA weights)")
    if ema and not roles[role].get("ema"):
        raise CheckpointError(f"{source}: role {role!r} has no EMA weights (the run had train.ema_decay=0)")
    return role, ema


def role_state_dict(step_dir: Path, role: str, ema: bool, manifest: dict) -> StateDict:
    from ctxf.ckpt.zero_consolidate import ZeroCheckpoint

    zero = ZeroCheckpoint(step_dir / role / DEEPSPEED_TAG)
    state = {spec.name: zero.tensor(spec) for spec in zero.specs()}
    if ema:
        state.update(read_safetensors(step_dir / f"{role}_ema.safetensors"))
    lora = manifest["roles"][role].get("lora")
    if lora:
        base, adapter = split_adapter(state)
        state = merge_state_dict(base, adapter, lora["alpha"] / lora["rank"])
    return state


def read_training_step(path: str | Path, key: str | None = None) -> tuple[str, StateDict, dict]:
    """(description, state dict, manifest) of one role of a training step (or a run's newest step)."""
    step_dir = resolve_step_dir(path)
    manifest = verify_step(step_dir)
    role, ema = split_role_key(key, manifest, step_dir)
    state = role_state_dict(step_dir, role, ema, manifest)
    return f"{step_dir} ({role}{' EMA' if ema else ''})", {k: v.to(torch.float32) for k, v in state.items()}, manifest


def is_training_run(path: str | Path) -> bool:
    """A step directory, or a run / checkpoints directory holding steps."""
    path = Path(path)
    return path.is_dir() and any((p / name).exists() for p in (path, path / "checkpoints")
                                 for name in ("manifest.json", "latest"))
