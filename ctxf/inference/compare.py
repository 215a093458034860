"""`--compare-memory slow_fast,sink_local`: the same stream under several memory policies.

Every policy streams with the same model, noise seed, prefix and prompt schedule into its own
directory (`<output_dir>/<policy>/`), then `compare.mp4` shows the videos left to right (in the
order given) and `compare.json` holds each policy's timings and cache sizes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ctxf.config import MEMORY_POLICIES, Config, ConfigError
from ctxf.inference.run import GenerationParts, GenerationResult, generate, scheduled_prompts
from ctxf.inference.video_writer import display_scale, side_by_side, write_mp4

TIMING_KEYS = ("wall_seconds", "num_chunks", "mean_chunk_seconds", "fps", "realtime_factor", "final_cache_bytes",
               "prompt_switch_seconds", "videos")


def parse_policies(value: str) -> list[str]:
    policies = [p.strip() for p in value.split(",") if p.strip()]
    unknown = [p for p in policies if p not in MEMORY_POLICIES]
    if unknown or len(policies) < 2 or len(set(policies)) != len(policies):
        raise ConfigError(f"--compare-memory {value!r}: give two or more different policies separated by commas, "
                          f"from {', '.join(MEMORY_POLICIES)} (e.g. slow_fast,sink_local)")
    return policies


def policy_configs(cfg: Config, policies: list[str]) -> dict[str, Config]:
    """One validated config per policy (a policy whose sizes do not fit fails before anything runs)."""
    configs = {}
    for policy in policies:
        policy_cfg = copy.deepcopy(cfg)
        policy_cfg.memory.policy = policy
        configs[policy] = policy_cfg.validate()
    return configs


def compare_memory(configs: dict[str, Config], parts: GenerationParts, prompt_at, num_frames: int) -> dict:
    """Stream under each policy, then write the side-by-side video and `compare.json`."""
    out_dir = Path(next(iter(configs.values())).inference.output_dir)
    results: dict[str, GenerationResult] = {}
    for policy, cfg in configs.items():
        results[policy] = generate(cfg, parts, out_dir / policy, scheduled_prompts(cfg, prompt_at), num_frames)
    cfg = next(iter(configs.values()))
    videos = []
    for sample in range(cfg.inference.batch_size):
        name = "compare.mp4" if cfg.inference.batch_size == 1 else f"compare_{sample}.mp4"
        frames = side_by_side([result.frames[sample] for result in results.values()])
        scale = display_scale(*next(iter(results.values())).frames.shape[2:4])
        videos.append(str(write_mp4(frames, out_dir / name, cfg.video.video_fps, scale)))
    report = {"policies": list(configs), "videos": videos,
              "per_policy": {policy: {key: result.summary[key] for key in TIMING_KEYS}
                             for policy, result in results.items()}}
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2))
    return report
