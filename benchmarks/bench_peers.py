"""Streaming peers at equal model size (docs/benchmarks.md).

One long rollout per model, on this machine in this run, all with random weights at the geometry of
our preset (tiny: 2 heads x 16, 2 layers, ffn 64, text 32, freq 32, 12 latent channels, patch
(1, 2, 2), 8 x 8 latents = 16 tokens per frame, chunks of 3 latent frames, 4 denoising steps per
chunk, no classifier-free guidance). Per chunk it records wall seconds, bytes of KV cache held,
keys one denoising step attends to, and tokens pushed through the model for that chunk:

- ours: ctxf's Slow-Fast Memory streaming (`bench_streaming.streaming_run`): 4 steps over the
  chunk against a bounded KV cache, then one clean refresh pass whose keys/values the memory keeps
  or evicts.
- AnyFlow-FAR (`diffusers.AnyFlowFARTransformer3DModel`), driven as `AnyFlowFARPipeline` does:
  per chunk, 4 flow-map Euler steps (`FlowMapEulerDiscreteScheduler`, same shift and so the same
  timesteps as ours) that read the KV cache, then a cache pass that re-encodes the *whole* video
  so far under its block mask: the last 2 chunks at full resolution, every older chunk through
  the compressed patch embedding (1, 4, 4) (4 tokens per frame here). The cache is preallocated
  for the planned length, as the pipeline does; "cache bytes" are the bytes it has filled. The
  pipeline skips the cache pass after its known last chunk; a stream never knows which chunk is
  last, so every chunk here pays it (as ours pays its refresh).
- SkyReels-V2 diffusion forcing (`diffusers.SkyReelsV2Transformer3DModel`,
  `num_frame_per_block=3`, `enable_diffusion_forcing=True`): no KV cache. The schedule is the
  pipeline's own `generate_timestep_matrix` with `ar_step=4` and `causal_block_size=3`, so one
  chunk is in flight at a time and gets 4 UniPC steps (per-frame schedulers, as the pipeline
  keeps them), and every step runs the model over the whole prefix of clean frames plus the
  chunk. The pipeline would feed the whole window including future, still-pure-noise blocks;
  its block-causal mask makes those irrelevant to the prefix, so they are left out (the unit
  test checks the result equals the pipeline's). Its cache bytes are 0; it keeps the latent
  prefix instead and recomputes it, reported as tokens per chunk. Its cost per step grows with
  the prefix, so its rollout is capped by `--skyreels-frames`.

This machine is shared: another process's burst of work can make a chunk 10-100x slower, for
seconds at a time. So the rollouts run in `--repeats` rounds of (ours, AnyFlow, ours, SkyReels)
(ours takes seconds, so it runs next to each peer, at different moments), and a time is the
fastest sample (as `timeit` reports the minimum): "early" is the fastest of 5 chunks around
`--probe-chunk` over all rounds, "late" the fastest of the last 5. Costs still growing over 5
chunks make "late" at most a few percent low. Tokens and keys per chunk are exact counts, free
of noise: they explain the times. Prints a table and ratios; writes
`peers.json` (every round's per-chunk numbers) and `peers.png`. Measures and prints only; it
never asserts timings.

    python benchmarks/bench_peers.py [--frames 480] [--skyreels-frames 240] [--repeats 2] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from ctxf.config import Config, load_config
from ctxf.models.flow_matching import sampling_timesteps
from ctxf.models.wan import WanDiT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import pyplot, write_report  # noqa: E402
from bench_streaming import streaming_run  # noqa: E402  (the benchmarks directory is not a package)

# AnyFlow's attention is flex_attention; on CPU without torch.compile it runs the unfused
# reference path (it says so once, at length). That is the path its pipeline takes here.
warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

ANYFLOW_COMPRESSED_PATCH = (1, 4, 4)  # AnyFlow's default long-term patch; 8x8 latents -> 2x2 tokens


@dataclass
class PeerChunk:
    """One generated chunk of a peer's stream and what it cost."""

    latents: torch.Tensor  # [B, C, F, H, W], the chunk's clean latents
    end_frame: int  # latent frames generated so far
    seconds: float  # wall time of the chunk: its denoising steps plus any cache / refresh pass
    cache_bytes: int  # KV-cache bytes held after the chunk
    keys_attended: int  # keys one query token of the chunk attends to in a denoising step
    tokens_computed: int  # tokens through the transformer for this chunk (all its forwards)
    history_bytes: int  # latent frames the model must keep to continue (to re-encode/recompute them)


# ---------------------------------------------------------------- models at equal geometry


def peer_kwargs(cfg: Config, num_frames: int) -> dict:
    """Constructor arguments shared by both diffusers peers: our preset's geometry."""
    m = cfg.model
    return dict(patch_size=tuple(m.patch_size), num_attention_heads=m.num_heads, attention_head_dim=m.head_dim,
                in_channels=m.in_channels, out_channels=m.out_channels, text_dim=m.text_dim, freq_dim=m.freq_dim,
                ffn_dim=m.ffn_dim, num_layers=m.num_layers, cross_attn_norm=m.cross_attn_norm, eps=m.eps,
                rope_max_seq_len=max(1024, num_frames))


def build_anyflow(cfg: Config, num_frames: int):
    from diffusers import AnyFlowFARTransformer3DModel

    return AnyFlowFARTransformer3DModel(**peer_kwargs(cfg, num_frames), compressed_patch_size=ANYFLOW_COMPRESSED_PATCH,
                                        full_chunk_limit=3).eval()


def build_skyreels(cfg: Config, num_frames: int):
    from diffusers import SkyReelsV2Transformer3DModel

    return SkyReelsV2Transformer3DModel(**peer_kwargs(cfg, num_frames), qk_norm="rms_norm_across_heads",
                                        num_frame_per_block=cfg.video.num_frames_per_block).eval()


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rollout_noise(cfg: Config, num_frames: int, seed: int) -> torch.Tensor:
    """Initial noise of the whole rollout `[1, C, F, H, W]`, drawn at once as both pipelines draw it."""
    shape = (1, cfg.model.in_channels, num_frames, cfg.video.latent_height, cfg.video.latent_width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- AnyFlow-FAR


def anyflow_cache(model, num_chunks: int, chunk_frames: int, tokens_per_frame: tuple[int, int], batch: int = 1):
    """Per-layer KV cache, preallocated for the planned rollout as `AnyFlowFARPipeline` sizes it:
    a full part for `full_chunk_limit` chunks and a compressed part for all older chunks."""
    c = model.config
    full_tokens, compressed_tokens = tokens_per_frame

    def zeros(tokens: int) -> torch.Tensor:
        return torch.zeros(2, batch, c.num_attention_heads, tokens, c.attention_head_dim)

    compressed_chunks = max(num_chunks - c.full_chunk_limit + 1, 1)
    return {layer: {"full_cache": zeros(c.full_chunk_limit * chunk_frames * full_tokens),
                    "compressed_cache": zeros(compressed_chunks * chunk_frames * compressed_tokens)}
            for layer in range(c.num_layers)}


@torch.no_grad()
def anyflow_stream(model, cfg: Config, text: torch.Tensor, noise: torch.Tensor) -> Iterator[PeerChunk]:
    """Chunk-by-chunk AnyFlow-FAR generation, the loop of `AnyFlowFARPipeline.__call__`.

    `noise` `[1, C, F, H, W]` is the rollout's initial noise (F a multiple of the chunk length).
    Per chunk: `set_timesteps(steps)`, then for each step a forward with flow-map target
    r = next sigma (`use_mean_velocity`) that reads the cache, and a scheduler step; then the
    cache pass (`is_cache_step`) over every frame so far at timestep 0, with the block mask from
    `build_attention_mask(mode="cache")`.
    """
    from diffusers import FlowMapEulerDiscreteScheduler

    scheduler = FlowMapEulerDiscreteScheduler(num_train_timesteps=cfg.diffusion.num_train_timesteps,
                                              shift=cfg.diffusion.shift)
    steps = len(cfg.diffusion.denoising_steps)
    block, (_, channels, total, height, width) = cfg.video.num_frames_per_block, noise.shape
    partition = [block] * (total // block)
    tokens_per_frame = tuple((height // p[1]) * (width // p[2])
                             for p in (model.config.patch_size, model.config.compressed_patch_size))
    kv_cache = anyflow_cache(model, len(partition), block, tokens_per_frame)
    # keys + values of one token over all layers: full_cache is [2 (k, v), B, H, tokens, D]
    token_bytes = sum(2 * layer["full_cache"][0, :, :, 0].numel() * layer["full_cache"].element_size()
                      for layer in kv_cache.values())
    kv_flag = {"num_cached_chunks": 0, "is_cache_step": False}
    history = torch.zeros(1, total, channels, height, width)  # the pipeline's `output`, [B, F, C, H, W]
    frame_bytes = history[0, 0].numel() * history.element_size()

    for index in range(len(partition)):
        started = time.perf_counter()
        start, end = index * block, (index + 1) * block
        latents = noise[:, :, start:end].permute(0, 2, 1, 3, 4)  # pipeline layout [B, F, C, H, W]
        scheduler.set_timesteps(steps)
        for step, t in enumerate(scheduler.timesteps):
            r = scheduler.sigmas[step + 1] * scheduler.config.num_train_timesteps
            step_flag = copy.deepcopy(kv_flag)  # the model writes its token counts into the copy
            velocity, _ = model(hidden_states=latents, timestep=t.expand(1, block), r_timestep=r.expand(1, block),
                                encoder_hidden_states=text, chunk_partition=partition[:index + 1],
                                kv_cache=kv_cache, kv_cache_flag=step_flag, return_dict=False)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        history[:, start:end] = latents
        cache_flag = dict(kv_flag, is_cache_step=True)
        zeros = torch.zeros(1, end)
        mask = model.build_attention_mask(chunk_partition=partition[:index + 1], height=height, width=width,
                                          mode="cache")
        model(hidden_states=history[:, :end], timestep=zeros, r_timestep=zeros, encoder_hidden_states=text,
              chunk_partition=partition[:index + 1], attention_mask=mask, kv_cache=kv_cache,
              kv_cache_flag=cache_flag, return_dict=False)
        kv_flag["num_cached_chunks"] += 1
        seconds = time.perf_counter() - started
        cached_tokens = cache_flag["num_full_tokens"] + cache_flag["num_compressed_tokens"]
        query_tokens = block * tokens_per_frame[0]
        yield PeerChunk(latents=latents.permute(0, 2, 1, 3, 4), end_frame=end, seconds=seconds,
                        cache_bytes=cached_tokens * token_bytes,
                        keys_attended=step_flag["num_cached_full_tokens"] + step_flag["num_cached_compressed_tokens"]
                        + query_tokens,
                        tokens_computed=steps * query_tokens + cached_tokens,
                        history_bytes=end * frame_bytes)


# ---------------------------------------------------------------- SkyReels-V2 diffusion forcing


def skyreels_schedule(model, scheduler, num_frames: int, block: int, steps: int):
    """The pipeline's own diffusion-forcing schedule: rows of per-frame timesteps, the frames each
    row updates, and the window it would feed. `ar_step = steps`: a block starts when the one
    before it is clean, so exactly one chunk is denoised at a time, like ours."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    pipe = SkyReelsV2DiffusionForcingPipeline(tokenizer=None, text_encoder=None, transformer=model, vae=None,
                                              scheduler=scheduler)
    pipe.scheduler.set_timesteps(steps)
    step_matrix, _, update_mask, windows = pipe.generate_timestep_matrix(
        num_frames, pipe.scheduler.timesteps, num_frames, ar_step=steps, causal_block_size=block)
    return step_matrix, update_mask, windows


@torch.no_grad()
def skyreels_stream(model, cfg: Config, text: torch.Tensor, noise: torch.Tensor) -> Iterator[PeerChunk]:
    """Chunk-by-chunk SkyReels-V2 diffusion forcing, the loop of
    `SkyReelsV2DiffusionForcingPipeline.__call__` (no guidance) with each forward cut to the
    prefix that ends at the chunk being denoised: every step recomputes all earlier frames."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=cfg.diffusion.shift,
                                        num_train_timesteps=cfg.diffusion.num_train_timesteps)
    steps = len(cfg.diffusion.denoising_steps)
    block, (_, _, total, height, width) = cfg.video.num_frames_per_block, noise.shape
    frame_tokens = (height // model.config.patch_size[1]) * (width // model.config.patch_size[2])
    step_matrix, update_mask, windows = skyreels_schedule(model, scheduler, total, block, steps)
    latents = noise.clone()
    frame_schedulers: dict[int, object] = {}  # per frame, as the pipeline keeps them
    chunk_rows: list[int] = []
    started = time.perf_counter()
    for row, (timesteps, updated, (window_start, _)) in enumerate(zip(step_matrix, update_mask, windows)):
        frames = updated.nonzero().flatten().tolist()
        prefix_end = frames[-1] + 1  # later blocks are masked out of this one's attention
        for frame in frames:
            if frame not in frame_schedulers:
                frame_schedulers[frame] = copy.deepcopy(scheduler)
                frame_schedulers[frame].set_timesteps(steps)
        velocity = model(hidden_states=latents[:, :, window_start:prefix_end], encoder_hidden_states=text,
                         timestep=timesteps[None, window_start:prefix_end], enable_diffusion_forcing=True,
                         return_dict=False)[0]
        for frame in frames:
            latents[:, :, frame] = frame_schedulers[frame].step(velocity[:, :, frame - window_start], timesteps[frame],
                                                                latents[:, :, frame], return_dict=False)[0]
        chunk_rows.append((prefix_end - window_start) * frame_tokens)
        chunk_done = row + 1 == len(step_matrix) or not update_mask[row + 1, frames[-1]]
        if chunk_done:
            end = frames[-1] + 1
            yield PeerChunk(latents=latents[:, :, end - block:end].clone(), end_frame=end,
                            seconds=time.perf_counter() - started, cache_bytes=0,
                            keys_attended=chunk_rows[-1], tokens_computed=sum(chunk_rows),
                            history_bytes=latents[:, :, :end].numel() * latents.element_size())
            for frame in frames:
                del frame_schedulers[frame]
            chunk_rows = []
            started = time.perf_counter()


# ---------------------------------------------------------------- runs


def collect(stream: Iterator[PeerChunk], num_chunks: int, desc: str) -> dict:
    """Run a peer's stream to the end; per-chunk lists in `streaming_run`'s format (and more)."""
    run = {key: [] for key in ("end_frame", "seconds", "cache_bytes", "keys_attended", "tokens_computed",
                               "history_bytes")}
    for chunk in tqdm(stream, total=num_chunks, desc=desc, unit="chunk", leave=False):
        for key in run:
            run[key].append(getattr(chunk, key))
    return run


def fastest_of(rounds: list[dict]) -> dict:
    """One run from repeated identical rollouts: per chunk the fastest time; counts from the first."""
    run = dict(rounds[0])
    run["seconds"] = [min(times) for times in zip(*(r["seconds"] for r in rounds))]
    run["seconds_rounds"] = [r["seconds"] for r in rounds]
    return run


def run_ours(cfg: Config, text: torch.Tensor, num_frames: int) -> tuple[dict, int]:
    torch.manual_seed(0)
    model = WanDiT(cfg.model).eval()
    run = streaming_run(cfg, model, text, num_frames)
    per_chunk = (len(sampling_timesteps(cfg.diffusion)) + 1) * cfg.video.num_frames_per_block * cfg.frame_seq_len
    run["tokens_computed"] = [per_chunk] * len(run["seconds"])  # 4 steps + 1 refresh pass over the chunk
    run["history_bytes"] = [0] * len(run["seconds"])  # the KV memory is all it keeps
    return run, num_params(model)


def run_peer(name: str, cfg: Config, text: torch.Tensor, num_frames: int) -> tuple[dict, int]:
    build, stream = {"anyflow": (build_anyflow, anyflow_stream), "skyreels": (build_skyreels, skyreels_stream)}[name]
    torch.manual_seed(0)
    model = build(cfg, num_frames)
    noise = rollout_noise(cfg, num_frames, seed=0)
    return collect(stream(model, cfg, text, noise), num_frames // cfg.video.num_frames_per_block, name), \
        num_params(model)


# ---------------------------------------------------------------- summary, table, plot


def window_fastest(values: list[float], start: int, count: int = 5) -> float:
    start = max(1, min(start, len(values) - count))  # chunk 0 carries warm-up
    return min(values[start:start + count])


def summarize(run: dict, probe: int, count: int = 5) -> dict:
    early, late = probe - count // 2, len(run["seconds"]) - count
    s_early, s_late = window_fastest(run["seconds"], early, count), window_fastest(run["seconds"], late, count)
    return {"frames": run["end_frame"][-1], "rollouts": len(run.get("seconds_rounds", [run["seconds"]])),
            "early_chunk": probe, "late_chunks": [late, len(run["seconds"]) - 1],
            "seconds_early": s_early, "seconds_late": s_late, "seconds_late_over_early": s_late / s_early,
            "cache_bytes_early": run["cache_bytes"][probe], "cache_bytes_late": run["cache_bytes"][-1],
            "keys_early": run["keys_attended"][probe], "keys_late": run["keys_attended"][-1],
            "tokens_early": run["tokens_computed"][probe], "tokens_late": run["tokens_computed"][-1],
            "history_bytes_late": run["history_bytes"][-1]}


def print_table(summary: dict, params: dict, notes: dict, frame_seq_len: int) -> None:
    header = (f"{'model':<10} {'params':>7} {'frames':>6} {'s/chunk@10':>10} {'s/chunk late':>12} {'late/early':>10} "
              f"{'KV@10 KiB':>9} {'KV late KiB':>11} {'keys/step @10->late':>20} {'tokens/chunk @10->late':>23}")
    print(header)
    print("-" * len(header))
    for name, s in summary.items():
        keys = f"{s['keys_early']}->{s['keys_late']}"
        tokens = f"{s['tokens_early']}->{s['tokens_late']}"
        print(f"{name:<10} {params[name]:>7} {s['frames']:>6} {s['seconds_early']:>10.4f} {s['seconds_late']:>12.4f} "
              f"{s['seconds_late_over_early']:>10.2f} {s['cache_bytes_early'] / 1024:>9.1f} "
              f"{s['cache_bytes_late'] / 1024:>11.1f} {keys:>20} {tokens:>23}")
    rollouts = ", ".join(f"{name} {s['rollouts']}" for name, s in summary.items())
    print(f"(s/chunk: fastest of 5 chunks over every rollout ({rollouts}); {frame_seq_len} tokens per latent frame; "
          "keys/step: keys a query of the chunk attends to per denoising step; tokens/chunk: tokens through the "
          "model for the chunk, all passes)")
    for name, note in notes.items():
        print(f"  {name}: {note}")


def plot(runs: dict, path: Path) -> None:
    plt = pyplot()

    fig, (ax_time, ax_bytes, ax_tokens) = plt.subplots(1, 3, figsize=(15, 4))
    for name, run in runs.items():
        ax_time.plot(run["end_frame"][1:], [s * 1000 for s in run["seconds"][1:]], label=name, lw=0.8)
        ax_bytes.plot(run["end_frame"], [b / 1024 for b in run["cache_bytes"]], label=name)
        ax_tokens.plot(run["end_frame"], run["tokens_computed"], label=name)
    ax_time.set(xlabel="latent frame", ylabel="ms per chunk", title="time per chunk", yscale="log")
    ax_bytes.set(xlabel="latent frame", ylabel="KiB", title="KV cache held")
    ax_tokens.set(xlabel="latent frame", ylabel="tokens", title="tokens through the model per chunk", yscale="log")
    for ax in (ax_time, ax_bytes, ax_tokens):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--frames", type=int, default=480, help="latent frames per rollout (480 = 2 min at 4/s)")
    parser.add_argument("--skyreels-frames", type=int, default=240,
                        help="cap on SkyReels' rollout, which recomputes its whole prefix every step (0: --frames)")
    parser.add_argument("--probe-chunk", type=int, default=10, help="the 'early' chunk")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of (ours, AnyFlow, ours, SkyReels); the fastest sample counts")
    parser.add_argument("--out", default="outputs/bench", help="directory for peers.json and peers.png")
    parser.add_argument("overrides", nargs="*", help="section.key=value for our config (geometry follows it)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    cfg = load_config(args.config, args.overrides)
    block = cfg.video.num_frames_per_block
    frames = -(-args.frames // block) * block
    sky_frames = min(frames, -(-(args.skyreels_frames or frames) // block) * block)
    probe = args.probe_chunk
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if sky_frames // block < probe + 5:
        parser.error(f"--frames / --skyreels-frames must give at least {probe + 5} chunks of {block} frames")
    torch.manual_seed(0)
    text = torch.randn(1, cfg.text.max_length, cfg.model.text_dim)

    print(f"{frames} latent frames ({frames / cfg.video.latent_fps:.0f} s; SkyReels {sky_frames}), chunks of {block}, "
          f"{len(cfg.diffusion.denoising_steps)} steps, {cfg.frame_seq_len} tokens per frame, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} (a shared machine: "
          "other processes' bursts show up as spikes)")
    rounds, params = {"ours": [], "anyflow": [], "skyreels": []}, {}
    for repeat in range(args.repeats):
        for name in ("ours", "anyflow", "ours", "skyreels"):
            started = time.perf_counter()
            if name == "ours":
                run, params[name] = run_ours(cfg, text, frames)
            else:
                run, params[name] = run_peer(name, cfg, text, sky_frames if name == "skyreels" else frames)
            rounds[name].append(run)
            print(f"  round {repeat + 1}/{args.repeats}: {name} {run['end_frame'][-1]} frames in "
                  f"{time.perf_counter() - started:.0f} s")
    runs = {name: fastest_of(runs_of_model) for name, runs_of_model in rounds.items()}

    notes = {
        "ours": f"Slow-Fast Memory ({cfg.memory.policy}), {params['ours']} parameters",
        "anyflow": (f"exact geometry plus AnyFlow's own compressed patch {ANYFLOW_COMPRESSED_PATCH} for chunks older "
                    f"than the last 2 (4 tokens/frame), {params['anyflow'] - params['ours']:+d} parameters "
                    "(far_patch_embedding, delta-time embedder); unfused eager flex_attention on CPU; "
                    "cache pass re-encodes the whole video every chunk"),
        "skyreels": ("exact geometry (same parameter count as ours); no KV cache, recomputes the whole prefix every "
                     "step" + (f"; rollout capped at {sky_frames} frames by --skyreels-frames" if sky_frames < frames
                               else "")),
    }
    summary = {name: summarize(run, probe) for name, run in runs.items()}
    print()
    print_table(summary, params, notes, cfg.frame_seq_len)

    ratios = {}
    for name in ("anyflow", "skyreels"):
        lo, hi = summary[name]["late_chunks"]
        ours_same = window_fastest(runs["ours"]["seconds"], lo, hi - lo + 1)  # ours over the same chunks
        ratios[f"{name}_late_over_ours"] = summary[name]["seconds_late"] / ours_same
        ratios[f"{name}_late_over_ours_late"] = summary[name]["seconds_late"] / summary["ours"]["seconds_late"]
    if summary["anyflow"]["frames"] == summary["ours"]["frames"]:  # the whole rollout, chunk by chunk fastest
        ratios["anyflow_total_over_ours"] = sum(runs["anyflow"]["seconds"]) / sum(runs["ours"]["seconds"])
    print("\nlate / early seconds per chunk: " + ", ".join(
        f"{name} x{s['seconds_late_over_early']:.2f}" for name, s in summary.items()))
    for name in ("anyflow", "skyreels"):
        print(f"{name} late seconds per chunk over ours at the same chunks ({summary[name]['frames']} frames): "
              f"x{ratios[f'{name}_late_over_ours']:.1f}")
    if "anyflow_total_over_ours" in ratios:
        print(f"anyflow total seconds over ours for all {frames} frames: x{ratios['anyflow_total_over_ours']:.1f}")

    report = {"config": args.config, "overrides": args.overrides, "frames": frames, "skyreels_frames": sky_frames,
              "probe_chunk": probe, "repeats": args.repeats, "frame_seq_len": cfg.frame_seq_len,
              "threads": torch.get_num_threads(),
              "params": params, "notes": notes, "summary": summary, "ratios": ratios, "runs": runs}
    write_report(args.out, "peers", report, lambda path: plot(runs, path),
                 note=f"load average at the end {os.getloadavg()[0]:.1f}; ")
    return report


if __name__ == "__main__":
    main()
