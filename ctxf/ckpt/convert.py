"""The conversions behind `ctxf-convert` (convert_cli.py is the command line around them).

    to_diffusers(src, dst)          any readable checkpoint -> a `WanTransformer3DModel` directory
    to_wan(src, dst)                any readable checkpoint -> Wan's original names (file or directory)
    zero_to_safetensors(src, dst)   a ZeRO-3 checkpoint -> safetensors, streamed tensor by tensor
    merge_lora(dst, ...)            a LoRA adapter folded into its base -> a diffusers directory

Every output goes through `atomic_output` (a temporary sibling renamed at the end) and every
input is read with safetensors or `torch.load(weights_only=True)`. A source is checked against
the model it implies (strict keys and shapes) before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ctxf.ckpt.atomic_output import atomic_output
from ctxf.ckpt.checkpoint_config import CONFIG_NAME, diffusers_config, model_config_for_checkpoint, wan_config
from ctxf.ckpt.checkpoint_files import Checkpoint, read_checkpoint, read_safetensors
from ctxf.ckpt.safetensors_stream import TensorSpec, write_file, write_weights
from ctxf.ckpt.training_checkpoint import read_manifest, resolve_step_dir, verify_step
from ctxf.ckpt.training_weights import is_training_run, split_role_key
from ctxf.ckpt.wan_keys import CheckpointError, StateDict, diffusers_to_wan
from ctxf.ckpt.zero_consolidate import ZeroCheckpoint, find_zero_dir
from ctxf.config import ModelConfig
from ctxf.models.lora import is_adapter_key, merge_state_dict

DTYPES: dict[str, torch.dtype | None] = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16,
                                          "fp16": torch.float16}
WAN_HEAD_DIM = 128  # every released Wan2.1 model; the weights alone cannot split width into heads


@dataclass
class Source:
    """A checkpoint read for conversion: its tensors (diffusers names) and the model they fit."""

    description: str
    state_dict: StateDict
    cfg: ModelConfig


def _manifest_model_config(manifest: dict) -> ModelConfig | None:
    model = manifest.get("config", {}).get("model")
    return ModelConfig(**model) if model else None


def _base_config(head_dim: int | None) -> ModelConfig:
    return ModelConfig(head_dim=head_dim or WAN_HEAD_DIM)


def read_source(src: str | Path, role: str | None = None, ema: bool = False, head_dim: int | None = None) -> Source:
    """Read `src` (diffusers directory or pipeline, Wan original file or directory, training step or
    run directory) and check it fits the model it describes; CheckpointError otherwise."""
    from ctxf.models.weights import check_weights_fit

    path = Path(src)
    cfg = None
    if path.exists() and is_training_run(path):
        manifest = verify_step(resolve_step_dir(path))
        role_name = role or manifest.get("default_role")
        checkpoint = read_checkpoint(path, f"{role_name}_ema" if ema else role_name)
        cfg = _manifest_model_config(manifest)
    else:
        if role is not None or ema:
            raise CheckpointError(f"{path} is not a training step directory: --role and --ema choose weights inside "
                                  f"one; leave them out")
        checkpoint = read_checkpoint(path)
    if cfg is None:
        cfg = model_config_for_checkpoint(checkpoint, _base_config(head_dim))
    check_weights_fit(cfg, checkpoint)
    return Source(checkpoint.source, checkpoint.diffusers_state_dict(), cfg)


def _specs(state_dict: StateDict, dtype: torch.dtype | None) -> list[TensorSpec]:
    """Tensors in name order; floating ones cast to `dtype` (None keeps each tensor's own)."""
    return [TensorSpec(name, tuple(t.shape), dtype if dtype is not None and t.is_floating_point() else t.dtype)
            for name, t in sorted(state_dict.items())]


def _from_dict(state_dict: StateDict):
    return lambda spec: state_dict[spec.name].to(spec.dtype)


def write_diffusers_dir(state_dict: StateDict, cfg: ModelConfig, dst: str | Path, dtype: torch.dtype | None = None,
                        max_shard_size: str | None = None, overwrite: bool = False,
                        description: str = "to-diffusers") -> Path:
    """A directory `WanTransformer3DModel.from_pretrained` loads: config.json and the weights."""
    config = diffusers_config(cfg)
    with atomic_output(dst, overwrite) as tmp:
        tmp.mkdir()
        write_weights(tmp, _specs(state_dict, dtype), _from_dict(state_dict), max_shard_size, description)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return Path(dst)


def to_diffusers(src: str | Path, dst: str | Path, *, role: str | None = None, ema: bool = False,
                 dtype: torch.dtype | None = None, max_shard_size: str | None = None, overwrite: bool = False,
                 head_dim: int | None = None) -> Path:
    source = read_source(src, role, ema, head_dim)
    return write_diffusers_dir(source.state_dict, source.cfg, dst, dtype, max_shard_size, overwrite)


def to_wan(src: str | Path, dst: str | Path, *, role: str | None = None, ema: bool = False,
           dtype: torch.dtype | None = None, max_shard_size: str | None = None, overwrite: bool = False,
           head_dim: int | None = None) -> Path:
    """Wan's original names: one `.safetensors` file (for `WanModel.load_state_dict`) or a directory
    laid out like Wan's releases (config.json in WanModel's form + weights)."""
    source = read_source(src, role, ema, head_dim)
    state_dict = diffusers_to_wan(source.state_dict)
    dst = Path(dst)
    with atomic_output(dst, overwrite) as tmp:
        if dst.suffix == ".safetensors":
            if max_shard_size is not None:
                raise CheckpointError(f"{dst} is one file; to shard, give a directory as the destination")
            write_file(tmp, _specs(state_dict, dtype), _from_dict(state_dict), "to-wan")
        else:
            tmp.mkdir()
            write_weights(tmp, _specs(state_dict, dtype), _from_dict(state_dict), max_shard_size, "to-wan")
            (tmp / CONFIG_NAME).write_text(json.dumps(wan_config(source.cfg), indent=2, sort_keys=True) + "\n")
    return dst


def zero_to_safetensors(src: str | Path, dst: str | Path, *, role: str | None = None,
                        dtype: torch.dtype | None = None, max_shard_size: str | None = None,
                        overwrite: bool = False) -> Path:
    """Consolidate a ZeRO-3 checkpoint, one tensor in memory at a time. The result holds exactly the
    tensors DeepSpeed's consolidation gives (adapters unmerged); for a training step whose role is a
    plain model it is also a diffusers directory (config.json from the run's config)."""
    source = find_zero_dir(src, role)
    zero = ZeroCheckpoint(source.tag_dir)
    specs = zero.specs(dtype or torch.float32)
    description = source.description
    dst = Path(dst)
    cfg = None
    if source.step_dir is not None and not any(is_adapter_key(s.name) for s in specs):
        cfg = _manifest_model_config(read_manifest(source.step_dir))
    with atomic_output(dst, overwrite) as tmp:
        if dst.suffix == ".safetensors":
            if max_shard_size is not None:
                raise CheckpointError(f"{dst} is one file; to shard, give a directory as the destination")
            write_file(tmp, specs, zero.tensor, f"consolidating {description}")
        else:
            tmp.mkdir()
            write_weights(tmp, specs, zero.tensor, max_shard_size, f"consolidating {description}")
            if cfg is not None:
                (tmp / CONFIG_NAME).write_text(json.dumps(diffusers_config(cfg), indent=2, sort_keys=True) + "\n")
    return dst


# ----------------------------------------------------------------------------- LoRA

@dataclass
class Adapter:
    file: Path
    tensors: StateDict
    scaling: float
    base: str  # where the base weights are, as recorded (may be empty)


def read_adapter(file: str | Path) -> Adapter:
    """A `<role>_lora.safetensors` and its `<role>_lora.json` ({"rank", "alpha", "base"})."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"LoRA adapter {file} does not exist")
    tensors = read_safetensors(file)
    foreign = sorted(k for k in tensors if not is_adapter_key(k))
    if not tensors or foreign:
        raise CheckpointError(f"{file} is not a LoRA adapter: keys such as {foreign[:3]} are not <layer>.lora_A / "
                              f"<layer>.lora_B")
    meta_file = file.with_suffix(".json")
    if not meta_file.is_file():
        raise CheckpointError(f"{meta_file} is missing: the adapter's rank and alpha are read from it")
    try:
        meta = json.loads(meta_file.read_text())
        scaling = float(meta["alpha"]) / int(meta["rank"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ZeroDivisionError) as err:
        raise CheckpointError(f"{meta_file} is damaged: it needs numbers \"rank\" and \"alpha\" ({err!r})") from err
    ranks = {int(t.shape[0]) for k, t in tensors.items() if k.endswith(".lora_A")}
    if ranks != {int(meta["rank"])}:
        raise CheckpointError(f"{file}: the adapters have rank {sorted(ranks)} but {meta_file.name} says "
                              f"{meta['rank']}; they do not belong together")
    return Adapter(file, tensors, scaling, str(meta.get("base") or ""))


def _step_adapter(src: Path, role: str | None) -> tuple[Adapter, Path, ModelConfig | None]:
    step_dir = resolve_step_dir(src)
    manifest = verify_step(step_dir)
    role, ema = split_role_key(role, manifest, step_dir)
    if ema or not manifest["roles"][role].get("lora"):
        raise CheckpointError(f"{step_dir}: role {role!r} was trained without LoRA (lora.rank=0); its weights are "
                              f"whole already, convert them with to-diffusers")
    return read_adapter(step_dir / f"{role}_lora.safetensors"), step_dir, _manifest_model_config(manifest)


def _resolve_base(recorded: str, relative_to: Path) -> Path:
    if not recorded:
        raise CheckpointError("the adapter does not record its base weights; give them with --base")
    path = Path(recorded)
    return path if path.is_absolute() or not (relative_to / path).exists() else relative_to / path


def merge_lora(dst: str | Path, *, src: str | Path | None = None, role: str | None = None,
               adapter: str | Path | None = None, base: str | Path | None = None, dtype: torch.dtype | None = None,
               max_shard_size: str | None = None, overwrite: bool = False, head_dim: int | None = None) -> Path:
    """Fold an adapter into its base and write a diffusers directory. The adapter comes from a
    training step (`src`, `role`) or a file (`adapter`, with its .json beside it); the base from
    `base` or else where the adapter's .json says (relative to the step or the adapter file)."""
    cfg = None
    if src is not None:
        lora, anchor, cfg = _step_adapter(Path(src), role)
    elif adapter is not None:
        lora = read_adapter(adapter)
        anchor = lora.file.parent
    else:
        raise CheckpointError("merge-lora needs a training step (SRC) or an adapter file (--adapter)")
    base_path = Path(base) if base is not None else _resolve_base(lora.base, anchor)
    base_checkpoint = read_checkpoint(base_path)
    if cfg is None:
        cfg = model_config_for_checkpoint(base_checkpoint, _base_config(head_dim))
    try:
        merged = merge_state_dict(base_checkpoint.diffusers_state_dict(), lora.tensors, lora.scaling)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{lora.file} does not fit the base weights {base_path}: {err.args[0]}") from err
    from ctxf.models.weights import check_weights_fit

    check_weights_fit(cfg, Checkpoint(str(base_path), "diffusers", merged, None))
    return write_diffusers_dir(merged, cfg, dst, dtype, max_shard_size, overwrite, "merge-lora")
