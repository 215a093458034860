"""Wan transformer checkpoints on disk: diffusers `WanTransformer3DModel` directories and Wan's
original `WanModel` checkpoints, read as stored and written in either naming.

    read_checkpoint(path)                   tensors as stored, their format, config.json if any
    load_diffusers_dir(path)                the state dict of a diffusers directory
    load_wan_original(path)                 a state dict under Wan's original names
    save_diffusers_dir(model, dir)          readable by `WanTransformer3DModel.from_pretrained`
    save_wan_original(model, path)          Wan's own names (.safetensors, .pth or a directory)

Reading accepts every layout released Wan checkpoints come in (single or sharded safetensors,
with or without an index, torch files, pipeline directories, wrapper prefixes such as `module.`)
and reports the format by which side of `WAN_KEY_MAP` the keys are named by; the renaming itself
is `ctxf.ckpt.wan_keys` and config.json is `ctxf.ckpt.checkpoint_config`. Loading into a model
is `ctxf.models.weights`.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ctxf.ckpt.checkpoint_config import CONFIG_NAME, diffusers_config, wan_config
from ctxf.ckpt.wan_keys import CheckpointError, StateDict, detect_format, diffusers_to_wan, wan_to_diffusers

if TYPE_CHECKING:
    from ctxf.models.wan import WanDiT

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' name; Wan's own releases use it too
WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
INDEX_SUFFIX = ".safetensors.index.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Wrappers that prefix every key: ComfyUI / single-file, Self-Forcing's `model.`, DDP, torch.compile.
WRAPPER_PREFIXES = ("model.diffusion_model.", "model.", "module.", "_orig_mod.")
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"  # how torch.load(weights_only=True) opens a refusal


# ----------------------------------------------------------------------------- reading

@dataclass
class Checkpoint:
    source: str
    format: str  # "wan" | "diffusers"
    state_dict: StateDict  # keys as stored, wrapper prefixes stripped
    config: dict | None  # config.json beside the weights, if any

    def diffusers_state_dict(self) -> StateDict:
        return self.state_dict if self.format == "diffusers" else wan_to_diffusers(self.state_dict)


def read_checkpoint(path: str | Path, state_dict_key: str | None = None) -> Checkpoint:
    """Read a Wan transformer checkpoint in any supported layout:

    - a directory written by `save_pretrained` (one `diffusion_pytorch_model.safetensors`, or shards
      with `diffusion_pytorch_model.safetensors.index.json`), or a pipeline directory holding one in
      `transformer/`; Wan's own releases use the same file names with original keys;
    - a directory of safetensors shards without an index;
    - one `.safetensors`, `.pth`, `.pt`, `.bin` or `.ckpt` file (torch files load with weights_only).

    - a ctxf training step directory (or a run directory: its newest complete step).

    `state_dict_key` picks the weights inside a torch file that holds several entries (for example
    `generator_ema` in a Self-Forcing checkpoint), or the role of a training step (`teacher`,
    `student`, `critic`; `student_ema` for its EMA weights).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    from ctxf.ckpt.training_weights import is_training_run, read_training_step

    if is_training_run(path):
        source, state_dict, _ = read_training_step(path, state_dict_key)
        return Checkpoint(source, "diffusers", state_dict, None)
    config = None
    if path.is_dir():
        directory = _weights_directory(path)
        state_dict = {}
        for file in _weight_files(directory):
            state_dict.update(_read_file(file, state_dict_key))
        config_path = directory / CONFIG_NAME
        if config_path.is_file():
            config = json.loads(config_path.read_text())
    else:
        state_dict = _read_file(path, state_dict_key)
    state_dict = _strip_wrapper_prefixes(state_dict)
    return Checkpoint(str(path), detect_format(state_dict, str(path)), state_dict, config)


def load_diffusers_dir(path: str | Path) -> StateDict:
    """The state dict of a diffusers `WanTransformer3DModel` directory (or its pipeline directory)."""
    checkpoint = read_checkpoint(path)
    if not Path(path).is_dir() or checkpoint.format != "diffusers":
        raise CheckpointError(f"{path} is not a diffusers WanTransformer3DModel directory "
                              f"(found a {checkpoint.format}-format checkpoint); use load_wan_original or "
                              f"read_checkpoint")
    return checkpoint.state_dict


def load_wan_original(path: str | Path, state_dict_key: str | None = None) -> StateDict:
    """A Wan original-format state dict (keys as in `WanModel`) from a file or a directory of shards."""
    checkpoint = read_checkpoint(path, state_dict_key)
    if checkpoint.format != "wan":
        raise CheckpointError(f"{path} holds diffusers names, not Wan original ones; use load_diffusers_dir")
    return checkpoint.state_dict


def _weights_directory(path: Path) -> Path:
    if not _has_weights(path) and _has_weights(path / "transformer"):
        return path / "transformer"
    return path


def _has_weights(directory: Path) -> bool:
    return directory.is_dir() and any(f.suffix == ".safetensors" or f.suffix in TORCH_SUFFIXES
                                      for f in directory.iterdir())


def _weight_files(directory: Path) -> list[Path]:
    indexes = sorted(directory.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) > 1:
        raise CheckpointError(f"{directory} holds several shard indexes ({', '.join(i.name for i in indexes)}); "
                              f"keep one checkpoint per directory")
    if indexes:
        names = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{indexes[0]} lists shards that are not there: {', '.join(missing)}")
        return [directory / n for n in names]
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return shards
    torch_files = sorted(f for f in directory.iterdir() if f.suffix in TORCH_SUFFIXES)
    if len(torch_files) == 1:
        return torch_files
    contents = ", ".join(sorted(f.name for f in directory.iterdir())) or "nothing"
    raise CheckpointError(f"{directory} holds no weights this loader knows (contents: {contents}); expected "
                          f"{WEIGHTS_NAME}, shards with *{INDEX_SUFFIX}, *.safetensors, or one torch file")


def _read_file(path: Path, state_dict_key: str | None) -> StateDict:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights file type {path.suffix!r}; give .safetensors, "
                              f"{', '.join(TORCH_SUFFIXES)} or a directory")
    return _unwrap(_read_torch_file(path), state_dict_key, path)


def read_safetensors(path: Path) -> StateDict:
    """Every tensor of a `.safetensors` file; an empty, truncated or altered file is a `CheckpointError`."""
    try:
        return load_file(path)
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}; {path.stat().st_size} bytes): "
                              f"it is empty, cut short or damaged. Copy or download it again and compare its "
                              f"size and sha256 with the source") from err


def _read_torch_file(path: Path) -> Any:
    """A torch file's content, loaded with `weights_only=True` (no arbitrary code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if WEIGHTS_ONLY_REFUSAL not in str(err):
            raise _damaged_torch_file(path, err) from err
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" such as {found.group(1)}" if found else ""
        raise CheckpointError(
            f"{path} holds pickled Python objects{what} besides tensors and plain containers; they are refused "
            f"because unpickling them can run arbitrary code. Where that object's code is available and trusted, "
            f"re-save the weights alone: torch.save(model.state_dict(), 'weights.pth'), or "
            f"safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # torch's zip reader and unpickler on bad bytes
        raise _damaged_torch_file(path, err) from err


def _damaged_torch_file(path: Path, err: Exception) -> CheckpointError:
    detail = (str(err).splitlines() or ["no detail"])[0]
    return CheckpointError(f"{path} is not a readable torch file ({type(err).__name__}: {detail}; "
                           f"{path.stat().st_size} bytes): it is empty, cut short or damaged. Copy or download it "
                           f"again and compare its size and sha256 with the source")


def error_summary(err: Exception) -> str:
    """The line of a (long, multi-line) torch.load error that says what was wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "WeightsUnpickler error" in line]
    return (telling or lines or [type(err).__name__])[0]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, state_dict_key: str | None, path: Path) -> StateDict:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if state_dict_key is not None:
        if state_dict_key not in obj:
            raise CheckpointError(f"{path} has no entry {state_dict_key!r}; entries: {', '.join(map(str, obj))}")
        obj = obj[state_dict_key]
        if not _is_state_dict(obj):
            raise CheckpointError(f"{path}[{state_dict_key!r}] is not a dict of tensors")
        return obj
    if _is_state_dict(obj):
        return obj
    candidates = [k for k, v in obj.items() if _is_state_dict(v)]
    if len(candidates) == 1:
        return obj[candidates[0]]
    raise CheckpointError(f"{path} holds several entries ({', '.join(map(str, obj))}); choose the weights with "
                          f"state_dict_key=<one of: {', '.join(map(str, candidates)) or 'none holds tensors'}>")


def _strip_wrapper_prefixes(state_dict: StateDict) -> StateDict:
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict


# ----------------------------------------------------------------------------- saving

def save_diffusers_dir(model: WanDiT, directory: str | Path, max_shard_size: int | str | None = None) -> Path:
    """Write config.json and safetensors (sharded with an index above `max_shard_size`, e.g. "5GB")
    that `WanTransformer3DModel.from_pretrained(directory)` loads."""
    directory = Path(directory)
    config = diffusers_config(model.cfg)
    _write_safetensors_dir(_cpu_state_dict(model), directory, max_shard_size)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def save_wan_original(model: WanDiT, path: str | Path, max_shard_size: int | str | None = None) -> Path:
    """Write the weights under Wan's original names: one `.safetensors` or `.pth`/`.pt` file, or
    (any other path) a directory laid out like Wan's releases (config.json + safetensors)."""
    path = Path(path)
    state_dict = diffusers_to_wan(_cpu_state_dict(model))
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state_dict, path, metadata={"format": "pt"})
    elif path.suffix in (".pth", ".pt"):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state_dict, path)
    else:
        _write_safetensors_dir(state_dict, path, max_shard_size)
        (path / CONFIG_NAME).write_text(json.dumps(wan_config(model.cfg), indent=2, sort_keys=True) + "\n")
    return path


def _cpu_state_dict(model: torch.nn.Module) -> StateDict:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _write_safetensors_dir(state_dict: StateDict, directory: Path, max_shard_size: int | str | None) -> None:
    """`diffusion_pytorch_model.safetensors`, or shards plus an index; earlier weight files of these
    names in `directory` are removed first so a reader never mixes two saves."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("diffusion_pytorch_model*.safetensors*"):
        stale.unlink()
    if max_shard_size is None:
        save_file(state_dict, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        return
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern=WEIGHTS_PATTERN,
                                               max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state_dict[k] for k in keys}, directory / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
