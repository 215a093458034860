"""One `ctxf-generate` run: build the parts once, stream a video under a memory policy, write it out.

`GenerationParts` holds what every stream of a run shares (codec and text encoder, model, the
prefix latents): built once, so `--compare-memory` runs each policy on the same model, noise
and prefix. `generate()` streams one video and writes `video.mp4` (one per sample),
`latents.safetensors` (prefix + generated) and `generation.json` (settings, prompt switches,
per-chunk timings and cache sizes).

A stream stops when it has its length, when standard input ends (`--interactive`), or on
Ctrl-C / SIGTERM: the chunk in flight finishes, then everything is written for the chunks
made so far (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import json
import math
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ctxf.config import Config
from ctxf.inference.generator import StreamingGenerator
from ctxf.inference.prefix import load_prefix
from ctxf.inference.prompts import PromptSchedule, PromptSource, ScheduledPrompt, load_schedule
from ctxf.inference.session import StreamingSession
from ctxf.inference.video_writer import Mp4Writer, display_scale, write_mp4
from ctxf.memory.cache import build_memory
from ctxf.models.codec import VideoCodec, video_to_uint8
from ctxf.models.factory import build_model, resolve_device
from data_pipeline.clip_encoding import ClipEncoder


@dataclass
class GenerationParts:
    device: torch.device
    encoder: ClipEncoder  # the data pipeline's codec + text encoder, so prefixes encode as training clips do
    model: torch.nn.Module
    prefix: torch.Tensor  # [B, C, F, H, W] clean latents to continue (F may be 0)

    @property
    def codec(self) -> VideoCodec:
        return self.encoder.codec

    def encode_prompt(self, prompt: str, batch_size: int) -> torch.Tensor:
        param = next(self.model.parameters())
        return self.encoder.text_encoder.encode([prompt] * batch_size).to(device=param.device, dtype=param.dtype)


@dataclass
class GenerationResult:
    summary: dict  # what generation.json's "summary" holds
    frames: torch.Tensor | None  # [B, T, H, W, 3] uint8 decoded video (None: written while it grew)


def build_parts(cfg: Config) -> GenerationParts:
    inf = cfg.inference
    device = resolve_device(inf.device)
    # codec and text encoder first: a missing path fails before a large model is allocated
    encoder = ClipEncoder(cfg, device=device)
    prefix = load_prefix(cfg, encoder)
    model = build_model(cfg.model, device, checkpoint=inf.checkpoint, seed=inf.seed,
                        checkpoint_key=inf.checkpoint_role or None)
    if not inf.checkpoint:
        print("note: no --checkpoint given, so the student has random weights (the tiny default's job is to "
              "exercise streaming, memory and video output, not to draw anything)", file=sys.stderr)
    shape = (cfg.model.in_channels, 0, cfg.video.latent_height, cfg.video.latent_width)
    if prefix is None:
        prefix = torch.empty(inf.batch_size, *shape)
    elif prefix.shape[0] == 1:
        prefix = prefix.expand(inf.batch_size, -1, -1, -1, -1)
    elif prefix.shape[0] != inf.batch_size:
        raise ValueError(f"prefix latents hold {prefix.shape[0]} videos but inference.batch_size="
                         f"{inf.batch_size}; give one prefix or one per video")
    return GenerationParts(device, encoder, model, prefix)


def scheduled_prompts(cfg: Config, prompt_at: list[ScheduledPrompt]) -> PromptSchedule:
    """`inference.prompt_schedule` merged with `--prompt-at` switches."""
    entries = load_schedule(cfg.inference.prompt_schedule) if cfg.inference.prompt_schedule else []
    return PromptSchedule(entries + list(prompt_at), cfg.video.latent_fps)


class StopRequests:
    """Ctrl-C / SIGTERM while streaming: ask the stream to stop after the chunk in flight."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.reason = ""

    def __enter__(self) -> "StopRequests":
        self.previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS}
        return self

    def _request(self, signum, frame) -> None:
        if self.reason:  # asked twice: stop now
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name
        print(f"\n{self.reason}: stopping after this chunk (again to stop at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class GrowingVideos:
    """The videos written chunk by chunk (fragmented mp4s, playable while they grow). Each chunk is
    decoded with the latent frame before it as context, so a causal video codec continues smoothly."""

    def __init__(self, cfg: Config, codec: VideoCodec, out_dir: Path, batch_size: int):
        self.codec, self.cfg = codec, cfg
        size = (cfg.video.latent_height * codec.spatial_stride, cfg.video.latent_width * codec.spatial_stride)
        self.writers = [Mp4Writer(out_dir / video_name(i, batch_size), cfg.video.video_fps, display_scale(*size),
                                  growing=True) for i in range(batch_size)]
        self.num_latent_frames, self.last = 0, None

    def write(self, latents: torch.Tensor) -> None:
        """Append the video frames of the next latent frames `[B, C, F, H, W]`."""
        if latents.shape[2] == 0:
            return
        context = latents if self.last is None else torch.cat([self.last, latents], dim=2)
        frames = video_to_uint8(self.codec.decode(context))
        total = self.num_latent_frames + latents.shape[2]
        new = self.codec.num_video_frames(total) - (self.codec.num_video_frames(self.num_latent_frames)
                                                     if self.num_latent_frames else 0)
        for writer, sample in zip(self.writers, frames):
            writer.write(sample[-new:])
        self.num_latent_frames, self.last = total, latents[:, :, -1:]

    def close(self) -> list[str]:
        """Finish the files; returns those holding frames (a stream stopped before its first chunk has none)."""
        for writer in self.writers:
            writer.close()
        return [str(w.path) for w in self.writers if w.num_frames]


def video_name(sample: int, batch_size: int) -> str:
    return "video.mp4" if batch_size == 1 else f"video_{sample}.mp4"


def generate(cfg: Config, parts: GenerationParts, out_dir: Path, prompts: PromptSource,
             num_frames: int | None, growing: bool = False) -> "GenerationResult":
    """Stream one video under `cfg.memory.policy` and write it to `out_dir`.
    `num_frames` None: until `prompts` is exhausted or a stop is requested. `growing`: write the
    video chunk by chunk as a growing file, paced to stay at most one chunk ahead of real time."""
    inf = cfg.inference
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = StreamingGenerator(parts.model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    first_prompt = prompts.first_prompt(inf.prompt)
    latent_shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    session = StreamingSession(generator, lambda p: parts.encode_prompt(p, inf.batch_size), first_prompt,
                               inf.prompt_switch, latent_shape, inf.seed, cfg.video.latent_fps)
    param = next(parts.model.parameters())
    if parts.prefix.shape[2]:
        session.prefill(parts.prefix.to(device=param.device, dtype=param.dtype))
    videos = GrowingVideos(cfg, parts.codec, out_dir, inf.batch_size) if growing else None
    if videos is not None:
        videos.write(parts.prefix.float())

    chunks, stopped = [], "done"
    total = None if num_frames is None else math.ceil(num_frames / cfg.video.num_frames_per_block)
    started = time.perf_counter()
    with StopRequests() as stop, tqdm(total=total, unit="chunk", desc=f"generating ({cfg.memory.policy})",
                                      disable=growing) as bar:
        for chunk in session.stream(num_frames, prompts):
            chunks.append(chunk.float().cpu())
            if videos is not None:
                videos.write(chunks[-1])
                print(f"chunk {len(chunks)}: {session.num_generated} latent frames written to "
                      f"{out_dir / video_name(0, inf.batch_size)} (prompt: {session.prompt})", file=sys.stderr)
            bar.set_postfix(cache=f"{generator.memory.cache_bytes() / 2**20:.2f}MB")
            bar.update(1)
            if growing:  # live: keep at most one chunk ahead of real time, so a typed prompt shows soon
                ahead = session.num_generated / cfg.video.latent_fps - (time.perf_counter() - started)
                time.sleep(max(0.0, ahead - cfg.video.num_frames_per_block / cfg.video.latent_fps))
            if stop.reason:
                stopped = stop.reason
                break
        else:
            stopped = "end of input" if prompts.exhausted else "done"
    # finishing: a Ctrl-C now would cut the files short
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        elapsed = time.perf_counter() - started
        generated = torch.cat(chunks, dim=2) if chunks else torch.empty(*parts.prefix.shape[:2], 0,
                                                                        *parts.prefix.shape[3:])
        videos_written = videos.close() if videos is not None else None
        frames = generated.shape[2]
        video_frames = parts.codec.num_video_frames(frames) if frames else 0
        return write_outputs(cfg, session, parts, generated, out_dir, videos_written, {
            "latent_frames": frames, "video_frames": video_frames, "video_seconds": video_frames / cfg.video.video_fps,
            "wall_seconds": elapsed, "fps": video_frames / elapsed, "realtime_factor":
            (video_frames / cfg.video.video_fps) / elapsed, "peak_memory_bytes": peak_memory_bytes(parts.device),
            "final_cache_bytes": generator.memory.cache_bytes(), "device": str(parts.device), "stopped": stopped})
    finally:
        signal.signal(signal.SIGINT, previous)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_outputs(cfg: Config, session: StreamingSession, parts: GenerationParts, generated: torch.Tensor,
                  out_dir: Path, videos: list[str] | None, summary: dict) -> "GenerationResult":
    """Latents, the videos (unless they were written as they grew) and generation.json."""
    prefix = parts.prefix.cpu().float()
    latents = torch.cat([prefix, generated], dim=2)
    save_file({"latents": latents.contiguous()}, str(out_dir / "latents.safetensors"))
    frames = None
    if videos is None:
        frames = video_to_uint8(parts.codec.decode(latents)) if latents.shape[2] else None
        videos = []
        for sample, sample_frames in enumerate(frames if frames is not None else []):
            scale = display_scale(frames.shape[2], frames.shape[3])
            videos.append(str(write_mp4(sample_frames, out_dir / video_name(sample, len(frames)),
                                        cfg.video.video_fps, scale)))
    switch_seconds = sum(s.seconds for s in session.switches)
    chunk_seconds = [s.seconds for s in session.generator.stats]
    summary = {**summary, "num_chunks": len(chunk_seconds),
               "mean_chunk_seconds": sum(chunk_seconds) / len(chunk_seconds) if chunk_seconds else 0.0, "videos": videos, "latents": str(out_dir / "latents.safetensors"),
               "num_prefix_frames": prefix.shape[2], "num_prompt_switches": len(session.switches),
               "prompt_switch_seconds": switch_seconds}
    record = {"summary": summary, "config": cfg.to_dict(),
              "prompts": {"first": session.first_prompt, "switch_mode": session.switch_mode,
                          "switches": [asdict(s) for s in session.switches]},
              "chunks": [asdict(s) for s in session.generator.stats]}
    path = out_dir / "generation.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2))
    partial.replace(path)  # a complete file or the previous one, never half of one
    return GenerationResult(summary, frames)
