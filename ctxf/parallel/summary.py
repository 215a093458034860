"""Human-readable views of a plan: the dry run's report and the per-degree projection table."""

from __future__ import annotations

import dataclasses

from ctxf.config import Config
from ctxf.parallel.estimates import estimate_communication, estimate_memory, wan_parameter_count
from ctxf.parallel.plan import ParallelPlan, PlanError, plan


def gigabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB"


def _groups_line(groups: list[list[int]]) -> str:
    shown = ", ".join(_ranks(g) for g in groups[:2])
    more = ", ..." if len(groups) > 2 else ""
    return f"{len(groups)} x {len(groups[0])} ranks: {shown}{more}"


def _ranks(group: list[int]) -> str:
    if len(group) <= 6:
        return str(group)
    step = group[1] - group[0]
    if step == 1:
        return f"[{group[0]}..{group[-1]}]"
    return f"[{group[0]}, {group[1]}, ..., {group[-1]}] (stride {step})"


def describe_plan(config: Config, parallel_plan: ParallelPlan) -> str:
    p = parallel_plan
    memory, comm = estimate_memory(config, p), estimate_communication(config, p)
    frames = config.parallel.teacher_num_frames
    rows = [
        f"process groups ({p.world_size} ranks; consecutive ranks share a node)",
        f"  zero (student, critic ZeRO-3)  {_groups_line([p.zero_group()])}",
        f"  context_parallel (cp={p.context_parallel_degree} = Ulysses {p.ulysses_degree} x ring {p.ring_degree})"
        f"  {_groups_line(p.context_parallel_groups())}",
        f"  ulysses                        {_groups_line(p.ulysses_groups())}",
        f"  ring                           {_groups_line(p.ring_groups())}",
        f"  data_parallel                  {_groups_line(p.data_parallel_groups())}",
        f"  teacher (shard degree {p.teacher_shard_degree})       {_groups_line(p.teacher_groups())}",
        "batch",
        f"  micro {p.micro_batch_size} x accumulation {p.gradient_accumulation_steps} x data-parallel "
        f"{p.data_parallel_size} = global {p.global_batch_size} samples per optimizer step",
        f"  DeepSpeed train_batch_size {p.global_batch_size * p.context_parallel_degree} (each sample counted "
        f"once per context-parallel rank holding it)",
        "teacher / critic sequence",
        f"  {frames} frames x {config.frame_seq_len} tokens = {p.teacher_num_tokens:,} tokens -> "
        f"{p.teacher_tokens_per_rank:,} per context-parallel rank (padding {p.teacher_padding})",
        f"memory per GPU (estimate, {wan_parameter_count(config.model) / 1e9:.3f} B parameters per DiT, "
        f"train.precision={config.train.precision}, teacher {config.model.dtype})",
        f"  student model states           {gigabytes(memory.student)}",
        f"  critic model states            {gigabytes(memory.critic)}",
        f"  teacher weights                {gigabytes(memory.teacher)}",
        f"  activations (largest phase)    {gigabytes(memory.activations)}  (teacher forward "
        f"{gigabytes(memory.teacher_forward_activations)}, critic {gigabytes(memory.critic_activations)}, "
        f"student {gigabytes(memory.student_activations)})",
        f"  KV cache (student memory)      {gigabytes(memory.kv_cache)}",
        f"  total                          {gigabytes(memory.total)}",
        "communication per rank per micro-step (estimate)",
        f"  ZeRO-3 student / critic        {gigabytes(comm.student_zero)} / {gigabytes(comm.critic_zero)}",
        f"  teacher parameter gathers      {gigabytes(comm.teacher_gather)}",
        f"  context parallel teacher / critic  {gigabytes(comm.teacher_context_parallel)} / "
        f"{gigabytes(comm.critic_context_parallel)}",
    ]
    return "\n".join(rows)


def projection_table(config: Config, world_size: int, degrees: list[int]) -> str:
    """Markdown table: memory per GPU and communication per rank for each context-parallel degree."""
    header = ("| cp (Ulysses x ring) | tokens / rank | student + critic states | teacher | activations: teacher "
              "forward / critic / student | KV | total (largest phase) | ZeRO-3 comm, each engine "
              "| CP comm teacher / critic |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for degree in degrees:
        candidate = dataclasses.replace(config, parallel=dataclasses.replace(
            config.parallel, context_parallel_degree=degree, ulysses_degree=0))
        try:
            p = plan(world_size, candidate)
        except PlanError as err:
            lines.append(f"| {degree} | impossible: {err} |")
            continue
        memory, comm = estimate_memory(candidate, p), estimate_communication(candidate, p)
        lines.append(
            f"| {degree} ({p.ulysses_degree} x {p.ring_degree}) | {p.teacher_tokens_per_rank:,} "
            f"| {gigabytes(memory.student + memory.critic)} | {gigabytes(memory.teacher)} "
            f"| {gigabytes(memory.teacher_forward_activations)} / {gigabytes(memory.critic_activations)} / "
            f"{gigabytes(memory.student_activations)} | {gigabytes(memory.kv_cache)} | {gigabytes(memory.total)} "
            f"| {gigabytes(comm.student_zero)} | {gigabytes(comm.teacher_context_parallel)} / "
            f"{gigabytes(comm.critic_context_parallel)} |")
    return "\n".join(lines)
