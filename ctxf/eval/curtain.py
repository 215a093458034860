"""The curtain memory test: how long does a model remember what a curtain hides?

    python -m ctxf.eval.curtain --checkpoint runs/student --role student --clips 16
    python -m ctxf.eval.curtain --checkpoint runs/student/step_000400 --gaps 0,1,2,4,8 --out outputs/eval

For each held-out curtain clip (`data_pipeline.curtain`, the same world and seed as the training
data) and each gap G of the grid (seconds; one latent frame = 0.25 s):
1. the model is given the clip up to the moment the curtain reopens: the scene, then G frames of
   curtain, written into its memory through the streaming generator `ctxf-generate` uses (prefix
   continuation), so the configured memory policy has to carry the sprite across G curtain frames;
2. it generates `--score-frames` frames from the reopening on, which are the frames read (the JSON
   lists them per clip);
3. each read frame scores identity recall (a strict reader of the sprite against the known
   library: an abstention is wrong) and background PSNR (pixels away from the true sprite box
   against the true background). A diagnostic beside it, never used for the effective context:
   colour recall, the colour `classify_identity` names (a lenient reader: the most common palette
   colour among saturated pixels, ghosts and blurs included) against the true colour; its own
   swapped-context control says how much of it a blind guess gets.
Why the curtain is given rather than generated: the progress bar reveals when the curtain opens
only frame by frame (one pixel per G/16 frames), so a model generating the gap from its first
frame would be scored on guessing G, not on remembering what the curtain hides.

The control stays in distribution: the same clip with its pre-curtain context swapped for
another held-out clip's. Its recall is the measured chance level; the uniform guess
(1 / identities) and the guess that knows the held-out rule are printed beside it. Effective
context length = the largest gap up to which recall stays at or above the midpoint between chance
(`--chance control`, default, or `uniform`) and the G = 0 ceiling.

Writes `<out>/curtain_eval.json` (every number, per clip) and `<out>/curtain_eval.png` (recall vs gap).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ctxf.eval.continuation import VideoContinuation
from ctxf.eval.sprite_reader import read_sprite
from data_pipeline.curtain import (LATENT_FRAME_SECONDS, CurtainSpec, CurtainTruth, classify_identity, make_clip,
                                   render_background)

DEFAULT_GAPS_SECONDS = (0, 1, 2, 4, 8, 12, 16, 24, 32)
PSNR_IDENTICAL_DB = 100.0  # what an exact background scores (finite, so the JSON stays standard)


@dataclass
class CurtainCase:
    """One clip at one gap: what the model is given, what it should produce (all of it is read)."""

    truth: CurtainTruth
    gap_frames: int
    prefix: np.ndarray  # [curtain_start + gap_frames, H, W, 3] uint8: the clip until the curtain reopens
    continuation: np.ndarray  # [score_frames, H, W, 3] uint8: the true frames from the reopening on

    @property
    def first_frame(self) -> int:
        """Absolute clip index of the continuation's first frame: the first with the curtain open."""
        return self.truth.curtain_start + self.gap_frames


def make_case(spec: CurtainSpec, seed: int, index: int, gap_frames: int, score_frames: int) -> CurtainCase:
    """Held-out clip `index` with its curtain closed for `gap_frames` (0: the curtain never closes)."""
    clip = make_clip(spec, seed, "heldout", index, gap=max(1, gap_frames))
    frames, truth = clip.frames, clip.truth
    if gap_frames == 0:  # drop the one curtain frame: the scene simply goes on
        frames = np.delete(frames, truth.curtain_start, axis=0)
        truth.sprite_positions = truth.sprite_positions[:truth.curtain_start] + \
            truth.sprite_positions[truth.curtain_start + 1:]
        truth.gap, truth.num_frames = 0, truth.num_frames - 1
    reopening = truth.curtain_start + gap_frames
    continuation = frames[reopening:reopening + score_frames]
    if continuation.shape[0] < score_frames:
        raise ValueError(f"score_frames={score_frames} is more than the {continuation.shape[0]} frames the world "
                         f"keeps after the curtain (spec.min_after={spec.min_after})")
    return CurtainCase(truth=truth, gap_frames=gap_frames, prefix=frames[:reopening], continuation=continuation)


def background_psnr(frame: np.ndarray, truth: CurtainTruth, absolute_frame: int, spec: CurtainSpec) -> float:
    """PSNR (dB) of `frame` against the true background, over pixels outside the true sprite box."""
    expected = render_background(truth.background, spec.frame_size).astype(np.float64)
    keep = np.ones(expected.shape[:2], bool)
    position = truth.sprite_positions[absolute_frame]
    if position is not None:
        height, width = truth.sprite_size
        keep[position[0]:position[0] + height, position[1]:position[1] + width] = False
    mse = ((frame.astype(np.float64) - expected)[keep] ** 2).mean()
    return PSNR_IDENTICAL_DB if mse == 0 else min(PSNR_IDENTICAL_DB, 10 * math.log10(255.0 ** 2 / mse))


@dataclass
class CaseScore:
    index: int
    identity: int
    read: list  # identity read per scored frame (None: abstained)
    colours: list  # colour index the lenient reader names per scored frame (None: nothing saturated)
    scored_frames: list  # absolute frame indices of the clip that were read
    recall: float
    colour_recall: float
    background_psnr: float
    context_from: int  # clip index whose pre-curtain frames the model saw (itself, or the control's partner)


def score_case(case: CurtainCase, generated: np.ndarray, spec: CurtainSpec, context_from: int) -> CaseScore:
    if generated.shape != case.continuation.shape:
        raise ValueError(f"the model returned frames of shape {generated.shape}, expected {case.continuation.shape}")
    truth = case.truth
    reads, colours, psnrs, absolute = [], [], [], []
    for offset in range(case.continuation.shape[0]):
        frame_index = case.first_frame + offset
        reads.append(read_sprite(generated[offset], spec))
        lenient = classify_identity(generated[offset], spec.num_shapes)
        colours.append(None if lenient is None else lenient.colour_index)
        psnrs.append(background_psnr(generated[offset], truth, frame_index, spec))
        absolute.append(frame_index)
    correct = [read == truth.identity for read in reads]
    return CaseScore(index=truth.index, identity=truth.identity, read=reads, colours=colours, scored_frames=absolute,
                     recall=float(np.mean(correct)),
                     colour_recall=float(np.mean([colour == truth.colour_index for colour in colours])),
                     background_psnr=float(np.mean(psnrs)),
                     context_from=context_from)


def control_partners(num_clips: int, seed: int) -> list[int]:
    """For each clip, another clip whose pre-curtain context replaces its own (a fixed derangement)."""
    shift = 1 + np.random.default_rng([seed, 7]).integers(num_clips - 1)
    return [(i + int(shift)) % num_clips for i in range(num_clips)]


@dataclass
class GapResult:
    gap_seconds: float
    gap_frames: int
    recall: float
    background_psnr: float
    control_recall: float | None
    colour_recall: float = 0.0
    control_colour_recall: float | None = None
    clips: list = field(default_factory=list)
    control_clips: list = field(default_factory=list)


def effective_context(gaps: list[GapResult], chance: float, key: str = "recall") -> tuple[float | None, float]:
    """(largest gap in seconds up to which recall stays >= the midpoint, the midpoint); the ceiling is the
    recall at the smallest gap of the grid (G = 0 when the grid has it). None when the ceiling is not above
    chance (nothing is remembered even without a gap, so no length can be measured). `key`: which recall
    (`recall`, identity; `colour_recall`, the diagnostic)."""
    ordered = sorted(gaps, key=lambda g: g.gap_frames)
    ceiling = getattr(ordered[0], key)
    midpoint = (chance + ceiling) / 2
    effective = None
    if ceiling <= chance:
        return None, midpoint
    for gap in ordered:
        if getattr(gap, key) < midpoint:
            break
        effective = gap.gap_seconds
    return effective, midpoint


def heldout_rule_chance(spec: CurtainSpec, backgrounds: list[int]) -> float:
    """Recall of a blind guess that knows the held-out rule: 1 / (identities allowed with the clip's background)."""
    allowed = [sum(spec.split_of(i, b) == "heldout" for i in range(spec.num_identities)) for b in backgrounds]
    return float(np.mean([1.0 / n for n in allowed]))


def check_settings(num_clips: int, gaps_seconds: list[float], score_frames: int, control: bool, chance: str) -> None:
    """Fail on settings the evaluation cannot run with, before any model is built."""
    gap_frames = [round(s / LATENT_FRAME_SECONDS) for s in gaps_seconds]
    if not gap_frames or any(g < 0 for g in gap_frames) or len(set(gap_frames)) != len(gap_frames):
        raise ValueError(f"gaps {gaps_seconds} s: give at least one, each >= 0 and distinct in frames of "
                         f"{LATENT_FRAME_SECONDS} s")
    if score_frames < 1:
        raise ValueError(f"score_frames={score_frames}: read at least 1 frame after the curtain reopens")
    if chance not in ("control", "uniform"):
        raise ValueError(f"chance={chance!r}: choose control or uniform")
    if chance == "control" and not control:
        raise ValueError("chance=control needs the control (drop --no-control or pass --chance uniform)")
    if num_clips < (2 if control else 1):
        raise ValueError(f"{num_clips} clips: the swapped-context control needs at least 2 (--clips 2 or more)")


def evaluate(model: VideoContinuation, spec: CurtainSpec, seed: int, num_clips: int, gaps_seconds: list[float],
             score_frames: int = 8, control: bool = True, chance: str = "control", progress: bool = True) -> dict:
    """Score `model` on held-out clips 0..num_clips-1 at every gap; returns the report (see the module doc)."""
    check_settings(num_clips, gaps_seconds, score_frames, control, chance)
    gap_frames = [round(s / LATENT_FRAME_SECONDS) for s in gaps_seconds]
    partners = control_partners(num_clips, seed) if control else []
    results = []
    total = len(gap_frames) * num_clips * (2 if control else 1)
    with tqdm(total=total, desc="curtain eval", unit="clip", disable=not progress) as bar:
        for seconds, gap in zip(gaps_seconds, gap_frames):
            cases = [make_case(spec, seed, index, gap, score_frames) for index in range(num_clips)]
            scores = []
            for case in cases:
                generated = model.continue_video(case.prefix, case.continuation.shape[0], case.truth.caption)
                scores.append(score_case(case, generated, spec, context_from=case.truth.index))
                bar.update(1)
            control_scores = []
            for case, partner in zip(cases, partners):
                generated = model.continue_video(cases[partner].prefix, case.continuation.shape[0], case.truth.caption)
                control_scores.append(score_case(case, generated, spec, context_from=partner))
                bar.update(1)
            results.append(GapResult(
                gap_seconds=float(seconds), gap_frames=gap, recall=float(np.mean([s.recall for s in scores])),
                background_psnr=float(np.mean([s.background_psnr for s in scores])),
                control_recall=float(np.mean([s.recall for s in control_scores])) if control else None,
                colour_recall=float(np.mean([s.colour_recall for s in scores])),
                control_colour_recall=float(np.mean([s.colour_recall for s in control_scores])) if control else None,
                clips=[asdict(s) for s in scores], control_clips=[asdict(s) for s in control_scores]))
    backgrounds = [make_clip(spec, seed, "heldout", i).truth.background for i in range(num_clips)]
    uniform = 1.0 / spec.num_identities
    chance_level = float(np.mean([r.control_recall for r in results])) if chance == "control" else uniform
    effective, midpoint = effective_context(results, chance_level)
    colour = None
    if control:  # the lenient reader's own chance: its swapped-context control
        colour_chance = float(np.mean([r.control_colour_recall for r in results]))
        colour_effective, colour_midpoint = effective_context(results, colour_chance, "colour_recall")
        colour = {"chance": colour_chance, "midpoint": colour_midpoint, "effective_context_seconds": colour_effective}
    return {"world": asdict(spec), "seed": seed, "num_clips": num_clips, "score_frames": score_frames,
            "chance": {"used": chance, "level": chance_level, "uniform": uniform,
                       "heldout_rule": heldout_rule_chance(spec, backgrounds),
                       "control_mean": float(np.mean([r.control_recall for r in results])) if control else None},
            "ceiling": sorted(results, key=lambda r: r.gap_frames)[0].recall, "midpoint": midpoint,
            "effective_context_seconds": effective, "colour": colour, "gaps": [asdict(r) for r in results]}


def evaluation_spec(frame_size: int, num_shapes: int, gaps_seconds: list[float], score_frames: int) -> CurtainSpec:
    """The curtain world of the training data (default entry and visible ranges), long enough for every gap."""
    longest = max(1, max(round(s / LATENT_FRAME_SECONDS) for s in gaps_seconds))
    return CurtainSpec.fitted(frame_size=frame_size, num_shapes=num_shapes, gap_range=(1, longest),
                              min_after=score_frames)


def recall_figure(size: tuple[float, float]):
    """A (figure, axes) on matplotlib's file-only Agg backend for a recall-vs-gap plot."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_recall_figure(fig, ax, path: Path, legend_size: int,
                       ylabel: str = "identity recall after reopening") -> None:
    """Label the recall-vs-gap axes, write the PNG and free the figure."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("gap (s)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_recall(report: dict, path: Path, label: str = "model") -> None:
    gaps = report["gaps"]
    seconds = [g["gap_seconds"] for g in gaps]
    fig, ax = recall_figure((6, 4))
    ax.plot(seconds, [g["recall"] for g in gaps], "o-", label=label)
    if gaps[0]["control_recall"] is not None:
        ax.plot(seconds, [g["control_recall"] for g in gaps], "x--", color="grey", label="swapped-context control")
    ax.axhline(report["chance"]["uniform"], color="black", lw=0.8, ls=":", label="1 / identities")
    ax.axhline(report["midpoint"], color="tab:red", lw=0.8, ls="-.", label="midpoint (effective context)")
    save_recall_figure(fig, ax, path, legend_size=8)


def write_report(report: dict, out_dir: Path, label: str = "model") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "curtain_eval.json", out_dir / "curtain_eval.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot_recall(report, png_path, label)
    return json_path, png_path


def parse_gaps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gaps {text!r}: give seconds separated by commas, e.g. 0,1,2,4") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ctxf.eval.curtain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="preset name or YAML path of the model (default: tiny)")
    parser.add_argument("--checkpoint", help="weights as ctxf-generate reads them: diffusers directory, Wan file, or "
                                             "a training run or step directory")
    parser.add_argument("--role", help="with a training checkpoint: student, teacher or critic (+ _ema)")
    parser.add_argument("--memory", help="memory policy to stream with (default: the config's memory.policy)")
    parser.add_argument("--generator", choices=("streaming", "teacher"), default="streaming",
                        help="streaming: a causal student through its KV memory, as ctxf-generate runs it; teacher: "
                             "a bidirectional stage-0 teacher, window by window over its training context layout")
    parser.add_argument("--clips", type=int, default=16, help="held-out clips per gap (default 16)")
    parser.add_argument("--gaps", type=parse_gaps, default=list(DEFAULT_GAPS_SECONDS),
                        help="gap grid in seconds (default 0,1,2,4,8,12,16,24,32)")
    parser.add_argument("--score-frames", type=int, default=8, help="frames read after the curtain reopens (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="world seed of the held-out clips (as make_curtain's)")
    parser.add_argument("--num-shapes", type=int, default=CurtainSpec.num_shapes, help="shapes in the library")
    parser.add_argument("--chance", choices=("control", "uniform"), default="control",
                        help="chance level of the midpoint: the swapped-context control's recall, or 1 / identities")
    parser.add_argument("--no-control", action="store_true", help="skip the swapped-context control (half the time)")
    parser.add_argument("--out", default="outputs/eval/curtain", help="where curtain_eval.json and .png go")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="any other config value")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ctxf.config import ConfigError, load_config
    from ctxf.eval.continuation import continuation_from_config

    args = parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in (("checkpoint", "inference.checkpoint"), ("role", "inference.checkpoint_role"),
                      ("memory", "memory.policy")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    try:
        cfg = load_config(args.config, overrides)
        check_settings(args.clips, args.gaps, args.score_frames, not args.no_control, args.chance)
        spec = evaluation_spec(cfg.video.latent_height * cfg.codec.pixel_patch, args.num_shapes, args.gaps,
                               args.score_frames)
        model = continuation_from_config(cfg, args.generator)
        report = evaluate(model, spec, args.seed, args.clips, args.gaps, args.score_frames,
                          control=not args.no_control, chance=args.chance)
    except ConfigError as err:
        print(f"curtain eval: config error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"curtain eval: error: {err}", file=sys.stderr)
        return 2
    report["checkpoint"] = cfg.inference.checkpoint
    report["role"] = cfg.inference.checkpoint_role
    report["memory_policy"] = cfg.memory.policy if args.generator == "streaming" else None
    report["generator"] = args.generator
    json_path, png_path = write_report(report, Path(args.out), label=report["memory_policy"] or "stage-0 teacher")
    chance = report["chance"]
    print(f"{'gap s':>6} {'recall':>7} {'control':>8} {'bg PSNR':>8} {'colour':>7} {'control':>8}")
    for gap in report["gaps"]:
        control, colour_control = ("-" if gap[key] is None else f"{gap[key]:.3f}"
                                   for key in ("control_recall", "control_colour_recall"))
        print(f"{gap['gap_seconds']:>6g} {gap['recall']:>7.3f} {control:>8} {gap['background_psnr']:>8.2f} "
              f"{gap['colour_recall']:>7.3f} {colour_control:>8}")
    print(f"chance: {chance['level']:.3f} ({chance['used']}); 1/identities {chance['uniform']:.3f}, blind guess "
          f"knowing the held-out rule {chance['heldout_rule']:.3f}; ceiling {report['ceiling']:.3f}; "
          f"midpoint {report['midpoint']:.3f}")
    effective = report["effective_context_seconds"]
    print("effective context length: " + (f"{effective:g} s" if effective is not None else
                                          "undefined (the first gap's recall is not above chance)"))
    if report["colour"]:
        colour = report["colour"]["effective_context_seconds"]
        print("the same rule on colour recall (diagnostic, chance = its control): " +
              (f"{colour:g} s" if colour is not None else "undefined"))
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
