"""Distribution: the only package that creates process groups or imports DeepSpeed.

    config.py            the `parallel` config section
    plan.py              plan(world_size, config): the rank layout, checked, without processes
    topology.py          Topology: every process group, built once from a plan, passed explicitly
    launch.py            joining the job from launcher variables; a clean exit
    collectives.py       differentiable all-to-all, all-gather, ring shift
    sharding.py          which tokens a context-parallel rank holds; padding
    attention.py         ContextParallelAttention: Ulysses x ring around any local attention
    ring.py              ring attention with an online softmax
    context_parallel.py  ContextParallelModel: a WanDiT forward over a sharded sequence
    sharded_output.py    ShardedOutput: each rank's output latents; gathered, or reduced over shards
    teacher.py           FrozenTeacher: replicated or partitioned, gathered block by block
    ds_config.py         ds_configs/*.json completed from the training config
    engines.py           ZeRO-3 student and critic engines; how the loss stays right with cp
    estimates.py         memory per GPU and communication per rank, from formulas
    summary.py           the dry run's report and the projection table

Nothing is imported here: `ctxf.config` imports `ctxf.parallel.config`, which must not pull in
the rest.
"""
