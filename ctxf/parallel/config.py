"""Schema of the `parallel` config section (process-group layout and engines)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ParallelConfig:
    context_parallel_degree: int = field(
        default=1, metadata={"help": "ranks sharing one teacher sequence, each holding a contiguous shard of it; "
                                     "must divide the world size"})
    ulysses_degree: int = field(
        default=0, metadata={"help": "head-sharded (all-to-all) part of context_parallel_degree; the rest is ring "
                                     "attention. 0: the largest divisor of context_parallel_degree that divides "
                                     "model.num_heads"})
    pad_sequence: bool = field(
        default=True, metadata={"help": "pad a sequence the context-parallel degree does not divide and mask the "
                                        "padding; false: such a length is an error"})
    teacher_shard_degree: int = field(
        default=1, metadata={"help": "ranks the frozen teacher's parameters are partitioned over (gathered block "
                                     "by block in forward); 1: every rank holds the whole teacher"})
    teacher_num_frames: int = field(
        default=42, metadata={"help": "latent frames of one teacher (and critic) sequence [context | target]: "
                                      "sink 3 + slow 12 + fast 6 + target 21 (docs/method.md, stage 0)"})
    student_num_frames: int = field(
        default=21, metadata={"help": "latent frames the student keeps activations for in one step (the DMD "
                                      "window); sizes the memory estimate"})
    activation_checkpointing: bool = field(
        default=True, metadata={"help": "recompute each block in backward (student and critic); the memory "
                                        "estimate assumes the same"})
    ds_config: str = field(
        default="ds_configs/zero3.json", metadata={"help": "DeepSpeed JSON of the student and critic engines; "
                                                           "batch sizes, clipping and precision come from train.*"})
    backend: str = field(
        default="auto", metadata={"help": "torch.distributed backend: auto (nccl with CUDA, else gloo) | nccl | gloo"})
