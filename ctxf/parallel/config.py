"""Schema of the `parallel` config section (process-group layout and engines)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ParallelConfig:
    context_parallel_degree: int = field(default=1, metadata={"help": "ranks sharing one teacher sequence"})
    teacher_shard_degree: int = field(default=1, metadata={"help": "ranks the frozen teacher is partitioned over"})
