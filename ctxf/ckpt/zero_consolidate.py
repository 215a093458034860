"""Consolidating a DeepSpeed ZeRO-3 checkpoint one tensor at a time, with bounded memory.

    find_zero_dir(path, role)        where the shard files are (`<step>/<role>/zero`, or a DeepSpeed dir)
    ZeroCheckpoint(directory)        every rank's shard files, read for their layout
      .specs(dtype)                  a TensorSpec per consolidated tensor, in DeepSpeed's order
      .tensor(spec)                  one whole tensor, gathered from the ranks' partitions

What comes out is, tensor for tensor, what DeepSpeed's own
`deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint` returns (the tests compare
the two): buffers, frozen parameters (LoRA bases), then the trainable parameters, then shared names.

Reused from DeepSpeed's `zero_to_fp32`: the file discovery (`get_model_state_files`,
`get_optim_files`), its key names (`deepspeed.checkpoint.constants`) and the partition arithmetic
(`zero3_partitioned_param_info`). Not reused, and why:
- its `parse_model_states` / `parse_optim_states` unpickle with `weights_only=False`, which runs
  whatever code a file names. We load with `weights_only=True`, allowlisting DeepSpeed's
  `ZeroStageEnum` (an IntEnum) and standing an inert object in for the pickled `LossScaler`,
  whose contents a consolidation never reads.
- its lazy mode maps the optimizer files, but every page it gathers stays resident until the
  end, and `convert_zero_checkpoint_to_state_dict` materializes a whole shard (5 GB by default)
  before saving it: the full fp32 model twice over for a model below the shard size. Here each
  tensor is read with positioned reads (`os.preadv`) at the byte offset of its slice inside each
  rank's file, so what stays in memory is one tensor and the small metadata of each file.
  (The files are still loaded with mmap=True, only to learn where each tensor lies; no page of
  a tensor's data is touched through the mapping.)
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ctxf.ckpt.checkpoint_files import error_summary
from ctxf.ckpt.safetensors_stream import TensorSpec
from ctxf.ckpt.wan_keys import CheckpointError

OPTIM_FILE = "zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
MODEL_FILE = "zero_pp_rank_{rank}_mp_rank_00_model_states.pt"
_RANK = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(?:model|optim)_states\.pt$")


def _deepspeed_zero_to_fp32():
    """DeepSpeed's module, imported quietly (it logs the accelerator it picked)."""
    with contextlib.redirect_stdout(io.StringIO()):
        from deepspeed.utils import zero_to_fp32
    return zero_to_fp32


def _checkpoint_keys():
    """DeepSpeed's names for the entries of its shard files (`deepspeed.checkpoint.constants`)."""
    _deepspeed_zero_to_fp32()  # the first deepspeed import, made quiet
    from deepspeed.checkpoint import constants

    return constants


class _UnusedDeepSpeedObject:
    """Stands in for DeepSpeed runtime objects pickled beside the weights (the loss scaler):
    loading them would run DeepSpeed code for state a consolidation never reads."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _safe_globals() -> list:
    from deepspeed.runtime.zero.config import ZeroStageEnum

    return [ZeroStageEnum, (_UnusedDeepSpeedObject, "deepspeed.runtime.fp16.loss_scaler.LossScaler")]


def load_shard_file(path: Path) -> dict:
    """A DeepSpeed `*_states.pt` file, memory-mapped, loaded with `weights_only=True`."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors, plain containers and DeepSpeed's "
                              f"known checkpoint classes; it is not loaded for safety ({error_summary(err)})"
                              ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable DeepSpeed checkpoint file (truncated or damaged: "
                              f"{error_summary(err)})") from err


def deepspeed_tag_dir(path: Path) -> Path | None:
    """The tag directory of a DeepSpeed checkpoint: `path` itself, or what its `latest` names."""
    if any(path.glob("*_optim_states.pt")):
        return path
    latest = path / "latest"
    if latest.is_file():
        tag_dir = path / latest.read_text().strip()
        if tag_dir.is_dir() and any(tag_dir.glob("*_optim_states.pt")):
            return tag_dir
    return None


@dataclass(frozen=True)
class ZeroSource:
    tag_dir: Path  # the directory holding the shard files
    description: str
    step_dir: Path | None  # the ctxf training step it belongs to, if any


def find_zero_dir(path: str | Path, role: str | None = None) -> ZeroSource:
    """The shard files of a DeepSpeed checkpoint (a save directory with `latest`, or a tag
    directory) or of one role of a ctxf training step or run directory."""
    from ctxf.ckpt.training_checkpoint import DEEPSPEED_TAG, resolve_step_dir, verify_step
    from ctxf.ckpt.training_weights import is_training_run, split_role_key

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    tag_dir = deepspeed_tag_dir(path) if path.is_dir() else None
    if tag_dir is not None:
        if role is not None:
            raise CheckpointError(f"{path} is one DeepSpeed checkpoint, not a ctxf training step: leave out --role")
        return ZeroSource(tag_dir, str(tag_dir), None)
    if not is_training_run(path):
        raise CheckpointError(f"{path} holds no DeepSpeed ZeRO shard files (*_optim_states.pt); give a training step "
                              f"directory, a DeepSpeed checkpoint directory or its tag directory")
    step_dir = resolve_step_dir(path)
    manifest = verify_step(step_dir)
    role, ema = split_role_key(role, manifest, step_dir)
    if ema:
        raise CheckpointError(f"{step_dir}: EMA weights are stored whole in {role}_ema.safetensors, not as ZeRO "
                              f"shards; convert them with `ctxf-convert to-diffusers {step_dir} DST --role {role} "
                              f"--ema`")
    return ZeroSource(step_dir / role / DEEPSPEED_TAG, f"{step_dir} ({role})", step_dir)


@dataclass(frozen=True)
class FileTensor:
    """A flat tensor stored inside a file: where its first element is and how many there are."""

    file: Path
    byte_offset: int
    numel: int
    dtype: torch.dtype

    def read_into(self, start: int, out: torch.Tensor) -> None:
        """Fill `out` with elements [start, start + len(out)) of this tensor, with one positioned read."""
        if out.dtype != self.dtype or start < 0 or start + out.numel() > self.numel:
            raise ValueError(f"read of {out.numel()} {out.dtype} at {start} outside {self.numel} {self.dtype}")
        buffer = out.view(torch.uint8).numpy()  # [n] elements -> [n * itemsize] bytes, filled in place
        with open(self.file, "rb") as handle:
            read = os.preadv(handle.fileno(), [buffer], self.byte_offset + start * out.element_size())
        if read != buffer.nbytes:
            raise CheckpointError(f"{self.file} ends early: it is truncated")


@dataclass(frozen=True)
class FlatPartition:
    """One rank's flat fp32 parameter groups, read as if laid end to end (a parameter's slice may
    start in one group and, in principle, end in the next, as DeepSpeed's own reader allows)."""

    groups: tuple[FileTensor, ...]
    dtype: torch.dtype = torch.float32

    @property
    def numel(self) -> int:
        return sum(group.numel for group in self.groups)

    def read_into(self, start: int, out: torch.Tensor) -> None:
        filled, group_start = 0, 0
        for group in self.groups:
            group_end = group_start + group.numel
            begin, stop = max(start + filled, group_start), min(start + out.numel(), group_end)
            if begin < stop:
                group.read_into(begin - group_start, out[filled:filled + stop - begin])
                filled += stop - begin
            group_start = group_end
        if filled != out.numel():
            raise CheckpointError(f"{self.groups[0].file}: elements [{start}, {start + out.numel()}) lie outside the "
                                  f"rank's {self.numel} parameters")


def _all_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _all_tensors(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in _all_tensors(value)]
    return []


def locate_tensors(path: Path, state: dict, tensors: list[torch.Tensor]) -> list[FileTensor]:
    """Where each of `tensors` (part of `state`, loaded from `path` with mmap=True) lies inside the
    file. torch stores every storage uncompressed as a zip record `<archive>/data/<key>`, and an
    mmap load makes every storage a view of one mapping of the whole file: sorted by address, the
    storages line up with the records sorted by offset, and address minus offset is one constant."""
    import zipfile

    records = []  # (offset of the record's bytes in the file, size)
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if "/data/" in info.filename and not info.filename.endswith("serialization_id"):
                handle.seek(info.header_offset + 26)  # local file header: name and extra lengths at byte 26
                name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in range(2))
                records.append((info.header_offset + 30 + name_length + extra_length, info.file_size))
    records = [record for record in records if record[1]]  # empty storages have no bytes to find
    storages = sorted({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                       for t in _all_tensors(state) if t.untyped_storage().nbytes()}.items())
    records.sort()
    base = storages[0][0] - records[0][0] if storages and records else None
    if base is None or len(storages) != len(records) or any(
            address - base != offset or nbytes != size for (address, nbytes), (offset, size) in zip(storages, records)):
        raise CheckpointError(f"{path}: its tensors do not line up with the file's records; it was not written by "
                              f"torch.save (or was loaded without mmap)")
    return [FileTensor(path, t.data_ptr() - base, t.numel(), t.dtype) for t in tensors]


class ZeroCheckpoint:
    """The shard files of one ZeRO-3 tag directory, read for layout only: parameter names and
    shapes, and where each rank's flat fp32 partition sits in its file."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        keys = _checkpoint_keys()
        zero_to_fp32 = _deepspeed_zero_to_fp32()
        self._partition_info = zero_to_fp32.zero3_partitioned_param_info
        model_files = self._rank_files(MODEL_FILE, zero_to_fp32.get_model_state_files)
        model_states = [load_shard_file(f) for f in model_files]
        first = model_states[0]
        self.world_size = int(first.get("dp_world_size", len(model_states)))
        self.ds_version = first.get(keys.DS_VERSION)
        optim_files = self._rank_files(OPTIM_FILE, zero_to_fp32.get_optim_files)
        self._check_ranks(model_states, optim_files)
        self.buffers = {k: (v.float() if v.is_floating_point() else v).clone()
                        for k, v in first["module"].items() if k in first[keys.BUFFER_NAMES]}
        self.frozen_shapes = dict(first.get(keys.FROZEN_PARAM_SHAPES) or {})
        self._frozen = [self._locate_fragments(f, m, self.frozen_shapes) for f, m in zip(model_files, model_states)]
        self.param_shapes = {k: v for group in first[keys.PARAM_SHAPES] for k, v in group.items()}
        self.shared = dict(first.get("shared_params") or {})
        self._flat = [self._read_flat_layout(f) for f in optim_files]
        self._check_sizes()

    # ------------------------------------------------------------------ reading the files

    def _rank_files(self, pattern: str, deepspeed_lister) -> list[Path]:
        try:
            files = [Path(f) for f in deepspeed_lister(str(self.directory))]
        except FileNotFoundError as err:
            raise CheckpointError(f"{self.directory}: {err}; this is not a complete DeepSpeed checkpoint") from err
        ranks = sorted(int(_RANK.search(f.name).group(1)) for f in files if _RANK.search(f.name))
        if ranks and ranks[0] != 0:
            raise CheckpointError(f"{self.directory / pattern.format(rank=0)} is missing: every rank's shard is needed")
        return files

    def _check_ranks(self, model_states: list[dict], optim_files: list[Path]) -> None:
        for rank in range(self.world_size):
            for pattern in (MODEL_FILE, OPTIM_FILE):
                file = self.directory / pattern.format(rank=rank)
                if not file.is_file():
                    raise CheckpointError(f"{file} is missing: the checkpoint was written by {self.world_size} ranks "
                                          f"and consolidating it needs every rank's shard")
        if len(optim_files) != self.world_size or len(model_states) != self.world_size:
            raise CheckpointError(f"{self.directory} holds {len(optim_files)} optimizer and {len(model_states)} model "
                                  f"shard files for a checkpoint of {self.world_size} ranks; remove the extra ones")

    @staticmethod
    def _locate_fragments(path: Path, state: dict, shapes: dict) -> dict[str, FileTensor]:
        """Each frozen parameter's fragment on this rank (frozen parameters live in the model files)."""
        fragments = state.get(_checkpoint_keys().FROZEN_PARAM_FRAGMENTS) or {}
        missing = sorted(set(shapes) - set(fragments))
        if missing:
            raise CheckpointError(f"{path} lacks the fragments of frozen parameters {missing[:5]}")
        names = list(shapes)
        return dict(zip(names, locate_tensors(path, state, [fragments[n].reshape(-1) for n in names]))) if names else {}

    def _read_flat_layout(self, path: Path) -> FlatPartition:
        keys = _checkpoint_keys()
        state = load_shard_file(path)
        optimizer = state.get(keys.OPTIMIZER_STATE_DICT, {})
        if int(optimizer.get(keys.ZERO_STAGE, 0)) != 3:
            raise CheckpointError(f"{path} is a ZeRO stage {int(optimizer.get(keys.ZERO_STAGE, 0))} checkpoint; "
                                  f"zero-to-safetensors consolidates ZeRO-3 (use DeepSpeed's zero_to_fp32.py for others)")
        groups = optimizer[keys.FP32_FLAT_GROUPS]
        if any(g.dtype != torch.float32 for g in groups):
            raise CheckpointError(f"{path}: the flat partitions are {groups[0].dtype}, not float32")
        return FlatPartition(tuple(locate_tensors(path, state, [g.reshape(-1) for g in groups])))

    def _check_sizes(self) -> None:
        sizes = [flat.numel for flat in self._flat]
        if len(set(sizes)) != 1:
            raise CheckpointError(f"{self.directory}: the ranks' partitions differ in size ({sizes}); the shards come "
                                  f"from different saves")
        partitioned = sum(self._partition_info(math.prod(shape), self.world_size)[0]
                          for shape in self.param_shapes.values())
        if partitioned != sizes[0]:
            raise CheckpointError(f"{self.directory}: the parameters need {partitioned} elements per rank but each "
                                  f"rank's partition holds {sizes[0]}; the shards do not belong together")
        self._param_offsets, offset = {}, 0
        for name, shape in self.param_shapes.items():
            self._param_offsets[name] = offset
            offset += self._partition_info(math.prod(shape), self.world_size)[0]

    # ------------------------------------------------------------------ the consolidated tensors

    def specs(self, dtype: torch.dtype | None = None) -> list[TensorSpec]:
        """Every tensor DeepSpeed's consolidation returns, in its order; floating tensors in
        `dtype` (default float32, what the partitions hold)."""
        def spec(name: str, shape, stored: torch.dtype) -> TensorSpec:
            return TensorSpec(name, tuple(shape), (dtype or torch.float32) if stored.is_floating_point else stored)

        specs = [spec(k, v.shape, v.dtype) for k, v in self.buffers.items()]
        specs += [spec(k, s, torch.float32) for k, s in self.frozen_shapes.items()]
        specs += [spec(k, s, torch.float32) for k, s in self.param_shapes.items()]
        known = {s.name: s for s in specs}
        specs += [TensorSpec(alias, known[target].shape, known[target].dtype)
                  for alias, target in self.shared.items() if target in known and alias not in known]
        return specs

    def tensor(self, spec: TensorSpec) -> torch.Tensor:
        name = spec.name if spec.name in self._all_names() else self.shared[spec.name]
        if name in self.buffers:
            whole = self.buffers[name]
        elif name in self.frozen_shapes:
            whole = self._frozen_tensor(name)
        else:
            whole = self._trainable(name)
        return whole.to(spec.dtype) if whole.is_floating_point() else whole

    def _all_names(self) -> set[str]:
        return set(self.buffers) | set(self.frozen_shapes) | set(self.param_shapes)

    def _gather(self, name: str, shape: tuple[int, ...], per_rank: list, offset: int) -> torch.Tensor:
        """The whole tensor from each rank's partition: rank r holds elements [r * p, (r + 1) * p)
        of the flattened tensor, zero-padded at the end, starting at `offset` of its flat storage."""
        numel = math.prod(shape)
        partition = self._partition_info(numel, self.world_size)[0]
        whole = torch.empty(partition * self.world_size, dtype=per_rank[0].dtype)
        for rank, flat in enumerate(per_rank):
            flat.read_into(offset, whole[rank * partition:(rank + 1) * partition])
        return whole[:numel].view(shape).clone() if numel != whole.numel() else whole.view(shape)

    def _frozen_tensor(self, name: str) -> torch.Tensor:
        return self._gather(name, tuple(self.frozen_shapes[name]), [rank[name] for rank in self._frozen], 0)

    def _trainable(self, name: str) -> torch.Tensor:
        return self._gather(name, tuple(self.param_shapes[name]), self._flat, self._param_offsets[name])
