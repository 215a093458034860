"""What a checkpoint is, without loading its tensors: `ctxf-convert inspect PATH [--json]`.

    inspect_path(path) -> dict     format, parameter count, dtypes, implied geometry, key summary
    format_report(report) -> str   the same for a terminal

Safetensors files are read for their headers only (names, shapes, dtypes) and ZeRO-3 checkpoints
for their layout files' metadata, so inspecting a 14B checkpoint costs kilobytes. Torch files
have no header and are loaded (with `weights_only=True`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ctxf.ckpt.checkpoint_config import config_fields, weights_fields
from ctxf.ckpt.checkpoint_files import CONFIG_NAME, _strip_wrapper_prefixes, _weight_files, _weights_directory
from ctxf.ckpt.checkpoint_files import read_checkpoint
from ctxf.ckpt.training_checkpoint import resolve_step_dir, verify_step
from ctxf.ckpt.training_weights import is_training_run
from ctxf.ckpt.wan_keys import CheckpointError, detect_format, wan_to_diffusers
from ctxf.ckpt.zero_consolidate import ZeroCheckpoint, deepspeed_tag_dir, find_zero_dir
from ctxf.models.lora import is_adapter_key
from ctxf.models.weights import KNOWN_MODELS

FORMAT_NAMES = {"wan": "Wan original", "diffusers": "diffusers WanTransformer3DModel"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

Shapes = dict[str, torch.Tensor]  # meta tensors: names, shapes and dtypes without data


def _meta(shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _safetensors_shapes(file: Path) -> Shapes:
    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
    try:
        with safe_open(str(file), "pt") as handle:
            shapes = {}
            for name in handle.keys():
                sliced = handle.get_slice(name)
                shapes[name] = _meta(sliced.get_shape(), dtypes.get(sliced.get_dtype(), torch.uint8))
            return shapes
    except SafetensorError as err:
        raise CheckpointError(f"{file} is not a readable safetensors file (truncated or damaged: {err})") from err


def _weights_shapes(path: Path) -> tuple[Shapes, dict | None, str]:
    """(shapes, config.json or None, where the weights are) of a Wan / diffusers checkpoint."""
    if path.is_dir():
        directory = _weights_directory(path)
        files = _weight_files(directory)
        config_path = directory / CONFIG_NAME
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
    else:
        files, config, directory = [path], None, path
    if all(f.suffix == ".safetensors" for f in files):
        shapes: Shapes = {}
        for file in files:
            shapes.update(_safetensors_shapes(file))
    else:
        shapes = {k: _meta(v.shape, v.dtype) for k, v in read_checkpoint(path).state_dict.items()}
    return _strip_wrapper_prefixes(shapes), config, str(directory)


def _geometry(diffusers_shapes: Shapes, config: dict | None) -> dict:
    fields = weights_fields(diffusers_shapes)
    if config is not None:
        fields.update({k: v for k, v in config_fields(config).items() if k != "rope_theta"})
        if "head_dim" in fields and "num_heads" in fields:
            fields["dim"] = fields["head_dim"] * fields["num_heads"]
    known = KNOWN_MODELS.get((fields.get("dim"), fields.get("num_layers")))
    return {"geometry": fields, "known_model": known}


def summarize_keys(shapes: Shapes) -> list[str]:
    """One line per key pattern: `blocks.{0-29}.attn1.to_q.weight [1536, 1536] float32` when the blocks
    share it with one shape and dtype, the key itself outside the blocks."""
    patterns: dict[tuple[str, tuple, str], list[int]] = {}
    lines = []
    for name, tensor in shapes.items():
        match = _BLOCK.match(name)
        described = (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        if match:
            patterns.setdefault((match.group(2),) + described, []).append(int(match.group(1)))
        else:
            lines.append(f"{name} {list(described[0])} {described[1]}")
    for (rest, shape, dtype), blocks in patterns.items():
        span = f"{{{min(blocks)}-{max(blocks)}}}" if len(blocks) > 1 and len(blocks) == max(blocks) - min(blocks) + 1 \
            else "{" + ",".join(map(str, sorted(blocks))) + "}"
        lines.append(f"blocks.{span}.{rest} {list(shape)} {dtype}")
    return lines


def _tensor_report(shapes: Shapes) -> dict:
    return {"num_tensors": len(shapes), "num_parameters": sum(t.numel() for t in shapes.values()),
            "dtypes": dict(Counter(str(t.dtype).removeprefix("torch.") for t in shapes.values())),
            "keys": summarize_keys(shapes)}


def _zero_shapes(zero: ZeroCheckpoint) -> Shapes:
    return {spec.name: _meta(spec.shape, spec.dtype) for spec in zero.specs()}


def _model_report(shapes: Shapes, config: dict | None) -> dict:
    base = {k: v for k, v in shapes.items() if not is_adapter_key(k)}
    report = _tensor_report(shapes)
    report.update(_geometry(base, config))
    adapters = {k: v for k, v in shapes.items() if is_adapter_key(k)}
    if adapters:
        report["lora"] = _lora_summary(adapters)
    return report


def _lora_summary(adapters: Shapes) -> dict:
    ranks = sorted({int(t.shape[0]) for k, t in adapters.items() if k.endswith(".lora_A")})
    layers = sorted({k.rsplit(".", 1)[0] for k in adapters})
    return {"ranks": ranks, "num_layers": len(layers), "num_parameters": sum(t.numel() for t in adapters.values())}


def inspect_path(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    zero_dir = deepspeed_tag_dir(path) if path.is_dir() else None
    if zero_dir is not None:
        zero = ZeroCheckpoint(zero_dir)
        report = {"path": str(path), "format": "DeepSpeed ZeRO-3 checkpoint", "world_size": zero.world_size,
                  "deepspeed_version": zero.ds_version}
        report.update(_model_report(_zero_shapes(zero), None))
        return report
    if is_training_run(path):
        return _inspect_training_step(path)
    shapes, config, where = _weights_shapes(path)
    if shapes and all(is_adapter_key(k) for k in shapes):
        report = {"path": str(path), "format": "LoRA adapter", **_tensor_report(shapes), "lora": _lora_summary(shapes)}
        meta = path.with_suffix(".json")
        if path.is_file() and meta.is_file():
            report["adapter_config"] = json.loads(meta.read_text())
        return report
    fmt = detect_format(shapes, str(path))
    name = FORMAT_NAMES[fmt]
    if fmt == "diffusers" and path.is_dir() and where != str(path):
        name += " (in a pipeline directory)"
    report = {"path": str(path), "format": name, "weights": where}
    report.update(_tensor_report(shapes))
    report.update(_geometry(wan_to_diffusers(shapes) if fmt == "wan" else shapes, config))
    return report


def _inspect_training_step(path: Path) -> dict:
    step_dir = resolve_step_dir(path)
    manifest = verify_step(step_dir)
    report = {"path": str(path), "format": "ctxf training step", "step_dir": str(step_dir),
              "step": manifest.get("step"), "stage": manifest.get("stage"), "world_size": manifest.get("world_size"),
              "roles": {}}
    model = manifest.get("config", {}).get("model")
    for role, info in manifest.get("roles", {}).items():
        shapes = _zero_shapes(ZeroCheckpoint(find_zero_dir(step_dir, role).tag_dir))
        role_report = {"ema": bool(info.get("ema")), "lora_config": info.get("lora")}
        role_report.update(_model_report(shapes, None))
        if model:
            role_report["geometry"].update({k: model[k] for k in ("num_heads", "head_dim") if k in model})
        report["roles"][role] = role_report
    return report


def format_report(report: dict, indent: str = "") -> str:
    lines = []
    for key, value in report.items():
        if key == "keys":
            lines.append(f"{indent}keys ({len(value)} patterns):")
            lines += [f"{indent}  {line}" for line in value]
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            lines.append(f"{indent}{key}:")
            for name, sub in value.items():
                lines.append(f"{indent}  {name}:")
                lines.append(format_report(sub, indent + "    "))
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, int) and key.startswith("num_parameters"):
            lines.append(f"{indent}{key}: {value:,}")
        elif value is not None:
            lines.append(f"{indent}{key}: {value}")
    return "\n".join(lines)
