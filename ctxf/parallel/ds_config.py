"""The DeepSpeed JSON of the student and critic engines, completed from the training config.

The files in ds_configs/ hold only what is DeepSpeed's own business (ZeRO stage, buckets,
offload); the fields below are derived from `train.*` and the plan, so the JSON must leave them
out and the numbers cannot disagree. See engines.py for why `train_batch_size` counts each
sample once per context-parallel rank.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctxf.config import Config, ConfigError
from ctxf.parallel.estimates import block_parameter_count
from ctxf.parallel.plan import ParallelPlan

REPO_ROOT = Path(__file__).resolve().parents[2]
# fields the JSON must leave out, and where their values come from
DERIVED_FIELDS = {
    "train_batch_size": "train.global_batch_size x parallel.context_parallel_degree",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size / (micro batch x data-parallel size)",
    "gradient_clipping": "train.grad_clip",
    "bf16": "train.precision",
    "fp16": "train.precision (fp16 is not supported)",
    "optimizer": "train.<role>_lr, <role>_betas, weight_decay (a torch AdamW)",
    "scheduler": "the trainer (no DeepSpeed scheduler)",
}
# zero_optimization fields derived from the model, so ZeRO-3 gathers what estimates.py assumes:
# at most two blocks at once (the one running and the one prefetched).
DERIVED_ZERO_FIELDS = {
    "stage3_max_live_parameters": "2 x the parameters of one transformer block",
    "stage3_max_reuse_distance": "the parameters of one transformer block",
}
GATHERED_BLOCKS = 2


def resolve_ds_config_path(path: str) -> Path:
    """A path as given, else relative to the repository (so `ds_configs/zero3.json` works anywhere)."""
    for candidate in (Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"parallel.ds_config={path!r} not found (looked in the working directory and {REPO_ROOT})")


def deepspeed_config(config: Config, parallel_plan: ParallelPlan) -> dict:
    """The JSON of `parallel.ds_config` with the derived fields filled in."""
    path = resolve_ds_config_path(config.parallel.ds_config)
    try:
        ds_config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    for key, source in DERIVED_FIELDS.items():
        if key in ds_config:
            raise ConfigError(f"{path} sets {key!r}; remove it: it is derived from {source}")
    zero = ds_config.get("zero_optimization", {})
    for key, source in DERIVED_ZERO_FIELDS.items():
        if key in zero:
            raise ConfigError(f"{path} sets zero_optimization.{key}; remove it: it is derived from {source} "
                              f"(model.*), which the memory estimate of the dry run assumes")
    stage = zero.get("stage")
    if stage != 3:
        raise ConfigError(f"{path}: zero_optimization.stage is {stage}; the student and critic engines need 3")
    block = block_parameter_count(config.model)
    zero.update(stage3_max_live_parameters=GATHERED_BLOCKS * block, stage3_max_reuse_distance=block)
    ds_config.update(
        train_micro_batch_size_per_gpu=parallel_plan.micro_batch_size,
        gradient_accumulation_steps=parallel_plan.gradient_accumulation_steps,
        train_batch_size=parallel_plan.global_batch_size * parallel_plan.context_parallel_degree,
        gradient_clipping=config.train.grad_clip,
        bf16={"enabled": config.train.precision == "bf16"},
    )
    return ds_config
