"""Write the teacher's ODE trajectories (noise -> x0 through the few-step timesteps) as shards for
the `ode_init` stage.

    python -m data_pipeline.make_ode_pairs --config tiny_ode_init --out outputs/train/ode_pairs
    python -m data_pipeline.make_ode_pairs --config ode_init.yaml --out /data/ode --prompts prompts.txt \\
        --num-samples 20000 --device cuda
    python -m data_pipeline.make_ode_pairs --config tiny_ode_init --out outputs/train/ode_pairs \\
        --context-from builtin      # windows that continue training clips

The teacher is `distill.teacher_checkpoint` of the config (a stage-0 run: its LoRA merged);
each sample is one window of `distill.window_frames` latent frames, its trajectory stacked along
the frame axis (ctxf.stages.ode_init explains the layout). Prompts come from `--prompts` (one per
line, used in turn) or default to the built-in curtain world's caption.

With `--context-from SHARDS` (a shard source, or `builtin` for the config's built-in curtain
world) each trajectory continues a clip instead of starting a video: clip i (in shard order,
cycling) with its own caption, a window start drawn in whole chunks past the teacher's sink and
recent frames, and the teacher denoising the window given the clip's frames before it as its
stage-0 context layout ([sink | slow | recent], ctxf.stages.context_layout). The sample stores
the whole clip before the states (ctxf.stages.ode_init explains the layout), so the student can
take the same history into its memory. Sample i's noise is
seeded by (--seed, i), so an interrupted run resumes where its last complete shard ended: run
the same command again. `manifest.json` appears when every sample is written.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from ctxf.config import ConfigError, load_config
from ctxf.data.format import encode_sample
from ctxf.models.factory import resolve_device
from ctxf.models.flow_matching import sampling_timesteps
from ctxf.models.text_encoder import build_text_encoder
from ctxf.models.wan import WanDiT
from ctxf.models.weights import load_model_weights
from ctxf.stages.context_layout import layout_at
from ctxf.stages.ode_init import teacher_trajectory
from data_pipeline.curtain import FIXED_CAPTION
from data_pipeline.shards import (MANIFEST_NAME, SHARD_PREFIX, AtomicShardWriter, file_sha256, prepare_output_dir,
                                  write_manifest)
from data_pipeline.manifest import count_samples


def seeded(name: str) -> torch.Generator:
    """A generator seeded by the hash of `name`: the same draws in every run and on every machine."""
    digest = hashlib.sha256(name.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_noise(seed: int, index: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=seeded(f"ode:{seed}:{index}"))


class ContextClips:
    """The clips trajectories continue, read as needed: trajectory i continues clip i of the source (shard
    order, cycling) from a window start drawn for i."""

    def __init__(self, cfg, source: str, seed: int):
        from ctxf.data.default_shards import ensure_default_shards
        from ctxf.data.loader import ShardLoader

        self.cfg, self.seed, self.source = cfg, seed, source
        shards = str(ensure_default_shards(cfg)) if source == "builtin" else source
        self.loader = ShardLoader(shards, batch_size=1, max_length=cfg.text.max_length, shuffle_buffer=0,
                                  seed=cfg.data.seed, verify_checksums=cfg.data.verify_checksums)

    def _cycle(self) -> Iterator:
        while True:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                raise ValueError(f"--context-from {self.source}: no readable clip")

    def from_index(self, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]:
        """Per trajectory from `first` on: (clip [1, C, L, H, W'], padded text [1, T, D], valid text [t, D],
        metadata naming the clip and the window start)."""
        block, window, teacher = self.cfg.video.num_frames_per_block, self.cfg.distill.window_frames, self.cfg.teacher
        lowest = -(-(teacher.num_sink_frames + teacher.num_recent_frames) // block)
        for index, batch in enumerate(self._cycle()):
            if index < first:
                continue
            latents = batch.latents
            highest = (latents.shape[2] - window) // block
            if highest < lowest:
                raise ValueError(f"clip {batch.keys[0]} of {latents.shape[2]} latent frames is too short to continue: "
                                 f"it needs the teacher's sink and recent frames plus a window of {window}")
            chunk = lowest + int(torch.randint(highest - lowest + 1, (1,), generator=seeded(f"start:{self.seed}:{index}")))
            yield latents, batch.text, batch.text[0, :int(batch.text_lengths[0])], \
                {"caption": batch.meta[0].get("caption", ""), "clip": batch.keys[0],
                 "context_clip_frames": latents.shape[2], "context_frames": chunk * block}


def completed_shards(out_dir: Path) -> list[dict]:
    """Manifest entries of the complete shards an interrupted run left (partial files are never complete)."""
    entries = []
    for path in sorted(out_dir.glob(f"{SHARD_PREFIX}-*.tar")):
        entries.append({"name": path.name, "num_samples": count_samples(path), "num_bytes": path.stat().st_size,
                        "sha256": file_sha256(path)})
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.make_ode_pairs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny_ode_init", help="ctxf preset or YAML (default: tiny_ode_init)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, repeatable")
    parser.add_argument("--out", required=True, help="output directory for shards and manifest.json")
    parser.add_argument("--num-samples", type=int, default=64, help="trajectories to write (default 64)")
    parser.add_argument("--samples-per-shard", type=int, default=8, help="trajectories per shard (default 8)")
    parser.add_argument("--prompts", help="text file, one prompt per line (default: the curtain world's caption)")
    parser.add_argument("--context-from", metavar="SHARDS",
                        help="continue training clips: a shard source, or 'builtin' for the config's built-in "
                             "curtain world (default: windows from nothing)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--overwrite", action="store_true", help="start afresh, deleting shards already in --out")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.samples_per_shard < 1:
        parser.error("--num-samples and --samples-per-shard must be >= 1")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    teacher_path = cfg.distill.teacher_checkpoint
    if not teacher_path or not Path(teacher_path).exists():
        parser.error(f"distill.teacher_checkpoint={teacher_path!r} does not exist: train stage 0 first or point it at "
                     f"the teacher's run directory or weights (--set distill.teacher_checkpoint=PATH)")
    prompts = [FIXED_CAPTION]
    if args.prompts:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            parser.error(f"--prompts {args.prompts} holds no prompt")

    out = Path(args.out)
    if (out / MANIFEST_NAME).exists() and not args.overwrite:
        print(f"{out} is complete ({MANIFEST_NAME} exists); pass --overwrite to write it again")
        return 0
    if args.overwrite:
        prepare_output_dir(out, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    done = completed_shards(out)
    start = sum(entry["num_samples"] for entry in done)

    device = resolve_device(args.device)
    teacher = WanDiT(cfg.model)
    load_model_weights(teacher, teacher_path)
    teacher = teacher.to(device).eval()
    encoder = build_text_encoder(cfg.text, cfg.model.text_dim, device)
    empty = encoder.encode([""]).to(device)
    timesteps = sampling_timesteps(cfg.diffusion)
    dist = cfg.distill
    shape = (1, cfg.model.in_channels, dist.window_frames, cfg.video.latent_height, cfg.video.latent_width)
    meta = {"source": "ode_pairs", "teacher": str(teacher_path), "ode_timesteps": timesteps,
            "guidance": dist.teacher_guidance, "solver_substeps": dist.ode_solver_substeps}
    contexts = ContextClips(cfg, args.context_from, args.seed).from_index(start) if args.context_from else None
    with AtomicShardWriter(out, max_bytes=float("inf"), max_samples=args.samples_per_shard,
                           start_shard=len(done)) as writer, \
            tqdm(total=args.num_samples, initial=start, desc="teacher ODE trajectories", unit="traj") as bar:
        for index in range(start, args.num_samples):
            noise = sample_noise(args.seed, index, shape).to(device)
            if contexts is None:
                prompt = prompts[index % len(prompts)]
                text, valid_text = encoder.encode([prompt]).to(device), encoder.encode_valid([prompt])[0]
                clip, context, extra = None, None, {"caption": prompt}
            else:
                clip, text, valid_text, extra = next(contexts)
                clip, text = clip.to(device), text.to(device)
                context = clip[:, :, layout_at(extra["context_frames"], cfg.teacher).context]
            states = teacher_trajectory(teacher, noise, text, empty, timesteps, dist.ode_solver_substeps,
                                        dist.teacher_guidance, float(cfg.diffusion.num_train_timesteps),
                                        context=context)
            # [S+1, 1, C, W, H, W'] -> [C, (S+1) W, H, W']
            stacked = states[:, 0].permute(1, 0, 2, 3, 4).flatten(1, 2).cpu()
            if clip is not None:
                stacked = torch.cat([clip[0].cpu(), stacked], dim=1)  # [C, L + (S+1) W, H, W']
            writer.write(encode_sample(f"ode-{index:08d}", stacked, valid_text.cpu(),
                                       {**meta, **extra, "index": index}))
            bar.update(1)
    settings = {"config": args.config, "overrides": args.overrides, "num_samples": args.num_samples,
                "samples_per_shard": args.samples_per_shard, "seed": args.seed, "prompts": args.prompts or "built-in",
                "context_from": args.context_from}
    manifest = write_manifest(out, done + writer.shards, created_by="data_pipeline.make_ode_pairs",
                              settings=settings)
    print(f"wrote {args.num_samples - start} trajectories ({start} were already there): {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
