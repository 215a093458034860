"""Everything a training job checks before any process group starts, so bad input fails fast, once,
with the field and the fix named: the data source, the LoRA targets, the geometry of the initial
weights, and the step to resume from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ctxf.ckpt.training_checkpoint import find_resume_step, resolve_step_dir, verify_step
from ctxf.ckpt.wan_keys import CheckpointError
from ctxf.config import Config, ConfigError
from ctxf.data.sources import ShardSourceError, expand_shards


@dataclass
class PreflightResult:
    resume_from: Path | None


def preflight(config: Config, resume: str, world_size: int) -> PreflightResult:
    check_lora(config)
    check_teacher(config)
    if config.train.init_checkpoint:
        from ctxf.models.weights import check_weights_fit

        check_weights_fit(config.model, config.train.init_checkpoint)
    resume_from = resume_step(config, resume)
    check_data(config, world_size)
    return PreflightResult(resume_from=resume_from)


def check_teacher(config: Config) -> None:
    """The distillation stages need the frozen teacher's weights, of this model's geometry."""
    from ctxf.stages.config import TEACHER_STAGES

    stage, path = config.train.stage, config.distill.teacher_checkpoint
    if stage not in TEACHER_STAGES:
        return
    if not path:
        raise ConfigError(f"train.stage={stage} distils a frozen teacher: set distill.teacher_checkpoint to the "
                          f"stage-0 run directory (e.g. outputs/train/teacher) or to teacher weights")
    if not Path(path).exists():
        raise ConfigError(f"distill.teacher_checkpoint={path} does not exist: train stage 0 first "
                          f"(train.stage=teacher) or point it at a run directory or weights")
    from ctxf.models.weights import check_weights_fit

    check_weights_fit(config.model, path)


def check_data(config: Config, world_size: int) -> None:
    """Resolve the shards (generating the built-in ones when `data.shards` is empty)."""
    if not config.data.shards:
        from ctxf.data.default_shards import ensure_default_shards

        config.data.shards = str(ensure_default_shards(config))
    try:
        urls = expand_shards(config.data.shards)
    except ShardSourceError as err:
        hint = ""
        if config.train.stage == "ode_init":
            hint = ("; ode_init trains on the teacher's ODE trajectories: write them first with python -m "
                    "data_pipeline.make_ode_pairs --config <this config> --out <dir>")
        raise ShardSourceError(f"data.shards: {err}{hint}") from err
    data_parallel = world_size // config.parallel.context_parallel_degree
    if len(urls) < data_parallel:
        raise ShardSourceError(f"data.shards names {len(urls)} shards for {data_parallel} data-parallel ranks; each "
                               f"rank reads whole shards: write more, smaller shards or use fewer ranks")


def check_lora(config: Config) -> None:
    if not config.lora.rank:
        return
    from ctxf.models.lora import target_linears
    from ctxf.models.wan import WanDiT

    with torch.device("meta"):
        model = WanDiT(config.model)
    empty = [pattern for pattern, names in target_linears(model, config.lora.targets).items() if not names]
    if empty:
        raise ConfigError(f"lora.targets {empty} name no linear layer of the model; choose from to_q, to_k, to_v, "
                          f"to_out.0, ffn (or a longer path such as attn1.to_q)")


def resume_step(config: Config, resume: str) -> Path | None:
    """The step directory to resume from: `auto` the newest complete one (None when there is none),
    `never` None, else the given step directory, which must verify."""
    if resume == "never":
        return None
    if resume == "auto":
        step_dir = find_resume_step(Path(config.train.output_dir) / "checkpoints")
    else:
        step_dir = resolve_step_dir(resume)
    if step_dir is None:
        return None
    manifest = verify_step(step_dir)
    saved_model = manifest.get("config", {}).get("model", {})
    current = dataclasses.asdict(config.model)
    differ = [f"model.{k}: checkpoint {saved_model[k]!r}, config {current[k]!r}" for k in current
              if k in saved_model and saved_model[k] != current[k] and k not in ("attention_backend", "dtype")]
    if differ:
        raise CheckpointError(f"cannot resume from {step_dir}: it holds another model geometry ("
                              + "; ".join(differ) + "); use the same config or another train.output_dir")
    if manifest.get("stage") != config.train.stage:
        raise CheckpointError(f"cannot resume from {step_dir}: it was written by stage {manifest.get('stage')!r}, this "
                              f"run is stage {config.train.stage!r}; use another train.output_dir, or start from it "
                              f"with train.init_checkpoint")
    return step_dir
