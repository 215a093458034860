"""The memory experiment in one command (about 52 minutes on 2 cores at the defaults): does a long-context
teacher give a long-memory student?

    python -m ctxf.eval.experiment                       # the full experiment (make experiment)
    python -m ctxf.eval.experiment --root /tmp/x --teacher-steps 2 --init-steps 1 --student-steps 1 \\
        --pairs 2 --clips 2 --gaps 0,1 --score-frames 2 --nproc 1      # a smoke run in a few minutes

Sizing: the tiny presets' world (16 tokens per latent frame, 16x16 frames) with the larger model of
MODEL below, on 2 CPU ranks. Measured end to end at the defaults from a fresh clone on a 2-core
machine: teacher 8000 steps 23 min, ODE pairs 39 s, ODE init 400 steps 6.6 min, students 300
steps each 3.5-4.5 min, seven evaluations about 5 min; 52 min in all, set-up included.

Stages, each a run directory under --root, started from the previous one by name (as
`python -m ctxf.chain` does; complete runs are skipped, interrupted ones resume):
1. teacher: stage 0 on the built-in curtain world (fixed captions, gaps up to 6 s: TRAIN_WORLD;
   generated into <root>/data);
2. ode_pairs + ode_init: the causal student initialised from the teacher's ODE trajectories, each
   continuing a training clip (make_ode_pairs --context-from builtin);
3. from that same init, with the same data, seed and --student-steps each, every rollout after a
   clip prefix of up to 48 frames (STUDENT_PREFIX):
   (a) self_forcing, (b) longlive, (b') longlive_slowfast (LongLive's history-blind teacher with
   the Slow-Fast student of (c)), (c) context_dmd (Context Forcing).

Then `ctxf.eval.curtain` scores seven rows on the same held-out clips and gaps, each with the
swapped-context control: the stage-0 teacher (generating over its training context layout), the ODE
init every student starts from, (a), (a) streamed with Infinity-RoPE inference
(memory.policy=infinity_rope, no training), (b), (b'), (c). A row whose
<root>/eval/<row>/curtain_eval.json exists for the same settings is not evaluated again.

Writes <root>/experiment.json (every row, its training seconds and the per-clip reports' paths, and (c)
against (b') clip by clip: per gap the mean difference of colour recall and of background PSNR with a 95%
bootstrap interval over clips, ctxf.eval.paired) and <root>/experiment.png (recall vs gap, every row,
controls dashed; experiment_colour.png the same for the lenient colour recall), and prints the markdown
tables.
`--set key=value` applies to every stage; `--set STAGE:key=value` to one of teacher, ode_pairs,
ode_init, self_forcing, longlive, longlive_slowfast, context_dmd.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ctxf.chain import finished, run_steps, stage_overrides, training_launch
from ctxf.eval.curtain import DEFAULT_GAPS_SECONDS, parse_gaps, recall_figure, save_recall_figure
from data_pipeline.curtain import SPRITE_COLOURS

STUDENT_PRESETS = {"self_forcing": "_self_forcing", "longlive": "_longlive",
                   "longlive_slowfast": "_longlive_slowfast", "context_dmd": "_context_dmd"}
STAGES = ("teacher", "ode_pairs", "ode_init", *STUDENT_PRESETS)
# The experiment's model, for every stage and row. The tiny presets' DiT (hidden 32, ffn 64, 2 layers) is
# sized for tests: each of its tokens decodes 48 latent values from 32 dimensions, and after 1500 teacher
# steps its x0 at full noise was 8x worse than copying the last context frame. Hidden 64, ffn 256, 3 layers
# (~0.2M parameters) came within 1.2x of that copy in the same 1500 steps.
MODEL = ("model.num_heads=4", "model.head_dim=16", "model.num_layers=3", "model.ffn_dim=256")
# Stage 0 without error recycling: the curtain test gives the teacher clean context, and at this budget the
# recycled errors slow it down (flow loss 0.13 after 2000 steps without; 0.19-0.24 over steps 1000-1500 with).
# No caption dropout either: the experiment never asks the teacher for its unconditional branch (GUIDANCE below).
TEACHER = ("teacher.error_recycling_prob=0", "teacher.noise_error_prob=0", "teacher.caption_dropout=0")
# The training world's curtain gaps stay within the teacher's context (sink 3 | slow 6 x stride 4 | recent 6: the
# 30 frames before a window). With the world's default gaps (up to 120 frames) three reopenings in four showed a
# sprite the teacher's context could not hold, which trains it to hedge at every reopening; at 8000 steps it
# recalled the identity only at gap 0 (0.14) and 1 s (0.03). Shorter clips (64 frames) also put more of each
# clip around its curtain. Held-out clips keep every gap of the grid.
TRAIN_WORLD = ("data.default_max_gap=24",)
# Every student continues real clips in training, as the curtain test asks it to: ODE pairs continue training
# clips (make_ode_pairs --context-from builtin; from-nothing pairs left the students unable to continue a given
# scene, background PSNR 6.6-7.7 dB), and every DMD rollout takes in up to 48 of a clip's first frames.
STUDENT_PREFIX = ("distill.prefix_frames=48",)
# The ODE initialisation's learning rate for this model: at the tiny preset's 1e-3 it diverged (after 600 steps
# its x0 at full noise was 1.7x worse than the teacher weights it started from, mean squared error on its own
# pairs); at 2e-4 it was 1.8x better than them after 200 steps.
ODE_INIT = ("train.student_lr=2e-4",)
# The teacher unguided, for the ODE pairs and every student's DMD. The world has one caption for every clip, so
# the empty caption names the same clips and guidance has nothing to sharpen. At the presets' 5, against a
# teacher that never saw the empty caption (before teacher.caption_dropout), DMD took (c) from the ODE init's
# 13.3-13.8 dB background to 9.6-10.5 dB and its colour recall at 1 s from 0.13 to 0.02; unguided, 16-17 dB and
# 0.15 (300 steps, 16 clips, gaps 0-4 s).
GUIDANCE = ("distill.teacher_guidance=1",)
# The central comparison, clip by clip on the same held-out clips: Context Forcing against the same student
# distilled from a history-blind teacher (ctxf.eval.paired), on the two scores that are not at the floor here.
PAIRED = (("c", "b_slowfast"),)
PAIRED_SCORES = {"colour_recall": "colour recall", "background_psnr": "background PSNR (dB)"}
TIMINGS = "experiment_timings.json"
REPORT_FORMAT = 3  # raise when curtain_eval.json gains or changes fields: older reports are then scored again


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    run: str  # the run directory (stage) whose weights are scored
    memory: str | None  # memory policy to stream with (None: the stage preset's)
    generator: str = "streaming"  # ctxf.eval.continuation.continuation_from_config


# The teacher is bidirectional: it has no KV cache to stream through, so it generates as stage 0 trained it,
# window by window over [sink | slow | recent] of the history so far (TeacherContinuation).
ROWS = (Row("teacher", "stage-0 teacher (its training context)", "teacher", None, "teacher"),
        Row("init", "ODE init (every student's start)", "ode_init", None),
        Row("a", "(a) Self-Forcing", "self_forcing", None),
        Row("a_infinity_rope", "(a) + Infinity-RoPE inference", "self_forcing", "infinity_rope"),
        Row("b", "(b) LongLive", "longlive", None),
        Row("b_slowfast", "(b') LongLive, Slow-Fast student", "longlive_slowfast", None),
        Row("c", "(c) Context Forcing", "context_dmd", None))


def preset(args: argparse.Namespace, stage: str) -> str:
    suffix = {"teacher": "", "ode_pairs": "_ode_init", "ode_init": "_ode_init", **STUDENT_PRESETS}[stage]
    return f"{args.preset_prefix}{suffix}"


def stage_settings(args: argparse.Namespace, stage: str) -> list[str]:
    """Every override of `stage`: the shared data and seed, its budget, its links to earlier runs, then --set."""
    root = Path(args.root).resolve()
    shared = [*MODEL, f"train.seed={args.seed}", f"data.seed={args.seed}", f"data.cache_dir={root / 'data'}",
              f"data.default_clips={args.train_clips}", *TRAIN_WORLD]
    steps = {"teacher": args.teacher_steps, "ode_init": args.init_steps}.get(stage, args.student_steps)
    budget = [f"train.num_steps={steps}", f"train.checkpoint_every={max(1, steps // 10)}"]
    links = {"teacher": list(TEACHER),
             "ode_pairs": [*GUIDANCE, f"distill.teacher_checkpoint={root / 'teacher'}"],
             "ode_init": [*ODE_INIT, f"distill.teacher_checkpoint={root / 'teacher'}",
                          f"data.shards={root / 'ode_pairs' / 'manifest.json'}"]}
    student = [f"distill.teacher_checkpoint={root / 'teacher'}", f"train.init_checkpoint={root / 'ode_init'}",
               # the long-rollout curriculum spans the whole budget, as the presets' does theirs
               f"distill.rollout_growth_steps={args.student_steps}", *STUDENT_PREFIX, *GUIDANCE]
    own = links.get(stage, student)
    if stage == "ode_pairs":
        return [*shared, *own, *stage_overrides(args.set, stage, STAGES)]
    return [*shared, *budget, *own, *stage_overrides(args.set, stage, STAGES)]


def training_steps(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The commands still to run: complete runs (and a complete ODE pair set) are left out."""
    from ctxf.config import load_config

    root = Path(args.root).resolve()
    launch = training_launch(args.nproc, args.master_port)
    steps = []
    for stage in STAGES:
        settings = stage_settings(args, stage)
        load_config(preset(args, stage), settings)  # a bad setting fails here, before anything is launched
        if stage == "ode_pairs":
            if not (root / "ode_pairs" / "manifest.json").is_file():
                steps.append((stage, [sys.executable, "-m", "data_pipeline.make_ode_pairs", "--config",
                                      preset(args, stage), "--out", str(root / "ode_pairs"), "--num-samples",
                                      str(args.pairs), "--seed", str(args.seed), "--context-from", "builtin",
                                      # every rank reads whole shards: at least one shard per rank
                                      "--samples-per-shard", str(max(1, min(8, args.pairs // args.nproc))),
                                      *[f"--set={item}" for item in settings]]))
        elif not finished(root / stage, preset(args, stage), settings):
            steps.append((stage, [*launch, "--config", preset(args, stage), "--output-dir", str(root / stage),
                                  *settings]))
    return steps


def eval_settings(args: argparse.Namespace, row: Row) -> dict:
    root = Path(args.root).resolve()
    return {"report_format": REPORT_FORMAT, "checkpoint": str(root / row.run), "memory": row.memory,
            "generator": row.generator, "clips": args.clips, "gaps": list(args.gaps),
            "score_frames": args.score_frames, "seed": args.seed,
            "overrides": [*MODEL, *stage_overrides(args.set, row.run, STAGES)]}


def evaluate_row(args: argparse.Namespace, row: Row) -> dict:
    """The curtain report of `row`, computed now or read back when it exists for the same settings."""
    from ctxf.config import load_config
    from ctxf.eval.continuation import continuation_from_config
    from ctxf.eval.curtain import evaluate, evaluation_spec, write_report
    from data_pipeline.curtain import CurtainSpec

    out = Path(args.root).resolve() / "eval" / row.key
    settings = eval_settings(args, row)
    path = out / "curtain_eval.json"
    if path.is_file():
        report = json.loads(path.read_text())
        if report.get("experiment_settings") == settings:
            print(f"{row.label}: evaluated before, reading {path}", flush=True)
            return report
    how = "its training context layout" if row.generator == "teacher" else f"{row.memory or 'its own'} memory"
    print(f"{row.label}: evaluating {settings['checkpoint']} ({how})", flush=True)
    overrides = [*settings["overrides"], f"inference.checkpoint={settings['checkpoint']}"]
    if row.memory:
        overrides.append(f"memory.policy={row.memory}")
    cfg = load_config(preset(args, row.run), overrides)
    # the training data's world (ctxf.data.default_shards draws the default library)
    spec = evaluation_spec(cfg.video.latent_height * cfg.codec.pixel_patch, CurtainSpec.num_shapes, args.gaps,
                           args.score_frames)
    report = evaluate(continuation_from_config(cfg, row.generator), spec, args.seed, args.clips, args.gaps,
                      args.score_frames)
    report.update(checkpoint=settings["checkpoint"], experiment_settings=settings,
                  memory_policy=cfg.memory.policy if row.generator == "streaming" else None)
    write_report(report, out, label=row.label)
    return report


def row_summary(row: Row, report: dict, timings: dict) -> dict:
    gaps = report["gaps"]
    return {"key": row.key, "label": row.label, "run": row.run, "memory_policy": report["memory_policy"],
            "training_seconds": timings.get(row.run),
            "effective_context_seconds": report["effective_context_seconds"], "ceiling": report["ceiling"],
            "effective_colour_context_seconds": report["colour"]["effective_context_seconds"],
            "chance": report["chance"], "midpoint": report["midpoint"],
            "background_psnr": sum(g["background_psnr"] for g in gaps) / len(gaps),
            "gaps": [{key: g[key] for key in ("gap_seconds", "recall", "control_recall", "background_psnr",
                                              "colour_recall", "control_colour_recall")} for g in gaps],
            "report": str(Path(report["checkpoint"]).parent / "eval" / row.key / "curtain_eval.json")}


def markdown(head: list[str], body: list[list[str]]) -> str:
    """A markdown table: header, separator, one line per row of cells."""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *["| " + " | ".join(cells) + " |" for cells in body]])


def markdown_table(rows: list[dict]) -> str:
    gaps = [g["gap_seconds"] for g in rows[0]["gaps"]]
    head = ["row", "effective context (s)", *[f"recall @ {s:g} s" for s in gaps], "control recall",
            "background PSNR (dB)", "training s"]
    body = []
    for row in rows:
        effective = row["effective_context_seconds"]
        control = [g["control_recall"] for g in row["gaps"]]
        seconds = row["training_seconds"]
        body.append([row["label"], "undefined" if effective is None else f"{effective:g}",
                     *[f"{g['recall']:.3f}" for g in row["gaps"]], f"{sum(control) / len(control):.3f}",
                     f"{row['background_psnr']:.2f}", "-" if seconds is None else f"{seconds:.0f}"])
    return markdown(head, body)


def colour_table(rows: list[dict]) -> str:
    """The lenient diagnostic: the effective-context rule on colour recall (chance = its control), then
    colour recall per gap, each with its swapped-context control."""
    head = ["row", "effective context, colour (s)",
            *[f"colour @ {g['gap_seconds']:g} s (control)" for g in rows[0]["gaps"]]]
    body = []
    for row in rows:
        effective = row["effective_colour_context_seconds"]
        body.append([row["label"], "undefined" if effective is None else f"{effective:g}",
                     *[f"{g['colour_recall']:.2f} ({g['control_colour_recall']:.2f})" for g in row["gaps"]]])
    return markdown(head, body)


def paired_comparisons(reports: dict[str, dict]) -> list[dict]:
    """Each PAIRED (first, second) row pair: per gap and score, first minus second over the same clips."""
    from ctxf.eval.paired import paired_gaps

    labels = {row.key: row.label for row in ROWS}
    return [{"first": labels[first], "second": labels[second],
             **{key: paired_gaps(reports[first], reports[second], key) for key in PAIRED_SCORES}}
            for first, second in PAIRED]


def paired_table(comparison: dict) -> str:
    """One line per gap: each score's mean difference, 95% bootstrap interval, clips higher / lower."""
    def cell(gap: dict) -> str:
        return f"{gap['mean']:+.2f} [{gap['low']:+.2f}, {gap['high']:+.2f}], {gap['clips_higher']} / {gap['clips_lower']}"

    scores = list(PAIRED_SCORES)
    body = [[f"{gaps[0]['gap_seconds']:g} s", *[cell(gap) for gap in gaps]]
            for gaps in zip(*[comparison[key] for key in scores])]
    return markdown(["gap", *[f"{PAIRED_SCORES[key]}: difference [95% interval], clips higher / lower"
                              for key in scores]], body)


def plot_rows(rows: list[dict], path: Path, key: str = "recall") -> None:
    """Identity recall (or `key` = colour_recall) vs gap for every row, each with its control dashed."""
    fig, ax = recall_figure((7, 4.5))
    for index, row in enumerate(rows):
        colour = f"C{index}"
        seconds = [g["gap_seconds"] for g in row["gaps"]]
        ax.plot(seconds, [g[key] for g in row["gaps"]], "o-", color=colour, label=row["label"])
        ax.plot(seconds, [g[f"control_{key}"] for g in row["gaps"]], "x--", color=colour, alpha=0.5, lw=0.8)
    identity = key == "recall"
    chance = rows[0]["chance"]["uniform"] if identity else 1 / len(SPRITE_COLOURS)
    ax.axhline(chance, color="black", lw=0.8, ls=":", label="1 / identities" if identity else "1 / colours")
    ax.plot([], [], "x--", color="grey", label="swapped-context control (dashed, per row)")
    save_recall_figure(fig, ax, path, legend_size=7, ylabel="identity recall after reopening" if identity else
                       "colour recall after reopening (lenient reader)")


def record_time(root: Path):
    """An `on_done` that adds each stage's seconds to <root>/experiment_timings.json (resumed runs add up)."""
    def on_done(stage: str, seconds: float) -> None:
        path = root / TIMINGS
        timings = json.loads(path.read_text()) if path.is_file() else {}
        timings[stage] = timings.get(stage, 0.0) + seconds
        path.write_text(json.dumps(timings, indent=2) + "\n")
    return on_done


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ctxf.eval.experiment", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="outputs/experiment", help="runs, evaluations and results (default "
                                                                      "outputs/experiment)")
    parser.add_argument("--teacher-steps", type=int, default=8000, help="stage-0 teacher steps (default 8000)")
    parser.add_argument("--init-steps", type=int, default=400, help="ODE-init steps (default 400)")
    parser.add_argument("--student-steps", type=int, default=300,
                        help="steps of each of (a), (b), (b'), (c): one budget for all (default 300)")
    parser.add_argument("--pairs", type=int, default=256, help="teacher ODE trajectories (default 256)")
    parser.add_argument("--train-clips", type=int, default=256, help="curtain clips of the training data (default 256)")
    parser.add_argument("--clips", type=int, default=16, help="held-out clips per gap and row (default 16)")
    parser.add_argument("--gaps", type=parse_gaps, default=list(DEFAULT_GAPS_SECONDS),
                        help="gap grid in seconds (default 0,1,2,4,8,12,16,24,32)")
    parser.add_argument("--score-frames", type=int, default=8, help="frames read after reopening (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, training and held-out clips (default 0)")
    parser.add_argument("--nproc", type=int, default=2, help="ranks per training stage (default 2)")
    parser.add_argument("--master-port", type=int, default=29527, help="rendezvous port of the training launches")
    parser.add_argument("--preset-prefix", default="tiny", help="preset family (default tiny)")
    parser.add_argument("--set", action="append", default=[], metavar="[STAGE:]KEY=VALUE",
                        help="config override for every stage, or for one with a STAGE: prefix (repeatable)")
    args = parser.parse_args(argv)
    for name in ("teacher_steps", "init_steps", "student_steps", "pairs", "train_clips", "score_frames", "nproc"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.clips < 2:
        parser.error("--clips must be at least 2 (the swapped-context control swaps clips)")
    return args


def main(argv: list[str] | None = None) -> int:
    from ctxf.config import ConfigError

    args = parse_args(argv)
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        steps = training_steps(args)
    except ConfigError as err:
        print(f"ctxf.eval.experiment: config error: {err}", file=sys.stderr)
        return 2
    done = [stage for stage in STAGES if stage not in dict(steps)]
    print(f"experiment in {root}: to train {', '.join(dict(steps)) or 'nothing'}"
          + (f" (complete, skipped: {', '.join(done)})" if done else ""), flush=True)
    code = run_steps(steps, "ctxf.eval.experiment", on_done=record_time(root))
    if code:
        return code
    timings = json.loads((root / TIMINGS).read_text()) if (root / TIMINGS).is_file() else {}
    rows, reports = [], {}
    for row in ROWS:
        try:
            reports[row.key] = evaluate_row(args, row)
        except (ConfigError, ValueError, FileNotFoundError) as err:
            print(f"ctxf.eval.experiment: evaluating {row.label}: {err}", file=sys.stderr)
            return 2
        rows.append(row_summary(row, reports[row.key], timings))
    paired = paired_comparisons(reports)
    result = {"settings": vars(args), "training_seconds": timings, "rows": rows, "paired": paired}
    (root / "experiment.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_rows(rows, root / "experiment.png")
    plot_rows(rows, root / "experiment_colour.png", key="colour_recall")
    chance = rows[0]["chance"]
    print("\n" + markdown_table(rows) + "\n")
    print("colour recall, the lenient diagnostic (its swapped-context control in brackets):\n")
    print(colour_table(rows) + "\n")
    for comparison in paired:
        print(f"{comparison['first']} minus {comparison['second']}, clip by clip over the same {args.clips} held-out "
              f"clips:\n\n{paired_table(comparison)}\n")
    print(f"chance: 1/identities {chance['uniform']:.3f}, blind guess knowing the held-out rule "
          f"{chance['heldout_rule']:.3f}; each row's midpoint uses its own control's recall")
    print(f"shared cost: ODE pairs {timings.get('ode_pairs', 0):.0f} s, ODE init {timings.get('ode_init', 0):.0f} s "
          f"(training s counts runs made by this command; '-' when trained elsewhere)")
    print(f"wrote {root / 'experiment.json'}, {root / 'experiment.png'} and {root / 'experiment_colour.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
