"""Training methods, one module per stage; `build_method(runtime)` picks `train.stage`'s.

The package itself imports nothing heavy: `ctxf.config` reads the stage names from
`ctxf.stages.config` before any model code exists.
"""

from __future__ import annotations

from ctxf.stages.config import STAGE_NAMES


def method_class(stage: str):
    if stage == "teacher":
        from ctxf.stages.teacher import ContextTeacher

        return ContextTeacher
    if stage in ("local_dmd", "self_forcing"):
        from ctxf.stages.dmd import LocalDMD

        return LocalDMD
    if stage == "context_dmd":
        from ctxf.stages.dmd import ContextDMD

        return ContextDMD
    if stage == "longlive":
        from ctxf.stages.dmd import LongLive

        return LongLive
    if stage == "ode_init":
        from ctxf.stages.ode_init import ODEInit

        return ODEInit
    raise ValueError(f"train.stage={stage!r}: choose one of {', '.join(STAGE_NAMES)}")


def build_method(runtime):
    """The `TrainingMethod` of `runtime.config.train.stage`, built with its models and engines."""
    return method_class(runtime.config.train.stage)(runtime)
