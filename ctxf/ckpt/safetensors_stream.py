"""Writing safetensors one tensor at a time, so a conversion never holds more than one tensor.

    TensorSpec(name, shape, dtype)                  what a tensor will be, before it exists
    write_streaming(path, specs, produce)           one .safetensors file, tensors made on demand
    plan_shards(specs, max_shard_size)              {file name: [tensor names]}, diffusers' names
    write_file(path, specs, produce)                the same with a progress bar
    write_weights(directory, specs, produce, ...)   one file, or shards plus an index above a size

`safetensors.torch.save_file` takes a complete dict of tensors: a whole shard in memory at once
(and DeepSpeed's own conversion holds one 5 GB shard plus everything it read). The format is an
8-byte header length, a JSON header of names, dtypes, shapes and byte offsets, then the bytes in
that order, so knowing every shape up front is enough to write the header first and then each
tensor as it is produced. That is why this writer is ours; everything reads back through the
safetensors library, which is the check that the files are valid (tests/unit/test_convert_*).
Shard planning is huggingface_hub's `split_torch_state_dict_into_shards` on meta tensors.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from tqdm import tqdm

from ctxf.ckpt.checkpoint_files import INDEX_NAME, WEIGHTS_NAME, WEIGHTS_PATTERN

# torch dtype -> safetensors' dtype name (the dtypes a Wan checkpoint or a DeepSpeed buffer holds)
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
HEADER_ALIGNMENT = 8  # safetensors pads its header so the data starts 8-byte aligned


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return int(torch.Size(self.shape).numel()) * torch.empty((), dtype=self.dtype).element_size()


Producer = Callable[[TensorSpec], torch.Tensor]


def _header(specs: list[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for spec in specs:
        if spec.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{spec.name}: dtype {spec.dtype} cannot be stored in safetensors by this writer")
        header[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % HEADER_ALIGNMENT)


def write_streaming(path: Path, specs: list[TensorSpec], produce: Producer, metadata: dict[str, str] | None = None,
                    progress: tqdm | None = None) -> None:
    """Write `specs` to `path`, calling `produce(spec)` for each tensor in order and dropping it after
    its bytes are written. A produced tensor whose shape or dtype differs from its spec is an error."""
    header = _header(specs, metadata)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)))
        handle.write(header)
        for spec in specs:
            tensor = produce(spec)
            if tuple(tensor.shape) != tuple(spec.shape) or tensor.dtype != spec.dtype:
                raise ValueError(f"{spec.name}: produced {tuple(tensor.shape)} {tensor.dtype}, expected "
                                 f"{tuple(spec.shape)} {spec.dtype}")
            # [*shape] -> [nbytes] raw little-endian bytes, the layout safetensors stores
            handle.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del tensor
            if progress is not None:
                progress.update(spec.nbytes)


def write_file(path: Path, specs: list[TensorSpec], produce: Producer, description: str = "writing") -> None:
    """One .safetensors file, streamed, with a progress bar."""
    with tqdm(total=sum(s.nbytes for s in specs), unit="B", unit_scale=True, desc=description) as progress:
        write_streaming(path, specs, produce, {"format": "pt"}, progress)


def plan_shards(specs: list[TensorSpec], max_shard_size: int | str | None) -> dict[str, list[str]]:
    """File name -> tensor names: one `diffusion_pytorch_model.safetensors`, or shards of at most
    `max_shard_size` (e.g. "5GB") named as diffusers names them."""
    if max_shard_size is None:
        return {WEIGHTS_NAME: [spec.name for spec in specs]}
    with torch.device("meta"):
        shapes = {spec.name: torch.empty(spec.shape, dtype=spec.dtype) for spec in specs}
    split = split_torch_state_dict_into_shards(shapes, filename_pattern=WEIGHTS_PATTERN, max_shard_size=max_shard_size)
    return {name: list(keys) for name, keys in split.filename_to_tensors.items()}


def write_weights(directory: Path, specs: Iterable[TensorSpec], produce: Producer,
                  max_shard_size: int | str | None = None, description: str = "writing") -> list[Path]:
    """Write `specs` into `directory` as diffusers lays weights out: one file, or shards plus
    `diffusion_pytorch_model.safetensors.index.json` when they exceed `max_shard_size`."""
    specs = list(specs)
    by_name = {spec.name: spec for spec in specs}
    shards = plan_shards(specs, max_shard_size)
    written = []
    with tqdm(total=sum(s.nbytes for s in specs), unit="B", unit_scale=True, desc=description) as progress:
        for file_name, names in shards.items():
            path = Path(directory) / file_name
            write_streaming(path, [by_name[n] for n in names], produce, {"format": "pt"}, progress)
            written.append(path)
    if len(shards) > 1:
        weight_map = {name: file_name for file_name, names in shards.items() for name in names}
        index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
        (Path(directory) / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written
