"""`python -m ctxf.eval.experiment` end to end at a minimal scale (1-2 steps per stage, 2 held-out
clips, 2 gaps, 1 rank): every row of the table is trained and scored, and a rerun skips it all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gloo_workers import free_port

REPO = Path(__file__).resolve().parents[2]
ROWS = {"teacher": ("teacher", None), "init": ("ode_init", "slow_fast"), "a": ("self_forcing", "rolling"),
        "a_infinity_rope": ("self_forcing", "infinity_rope"), "b": ("longlive", "sink_local"),
        "b_slowfast": ("longlive_slowfast", "slow_fast"), "c": ("context_dmd", "slow_fast")}
STUDENTS = ("self_forcing", "longlive", "longlive_slowfast", "context_dmd")


def _experiment(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxf.eval.experiment", "--root", str(root), "--teacher-steps", "2",
                           "--init-steps", "1", "--student-steps", "1", "--pairs", "2", "--train-clips", "8",
                           "--clips", "2", "--gaps", "0,1", "--score-frames", "2", "--nproc", "1",
                           "--master-port", str(free_port()), "--set", "ode_pairs:distill.ode_solver_substeps=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def _tables(stdout: str) -> list[list[list[str]]]:
    """Every markdown table printed, as rows of cells."""
    tables, current = [], []
    for line in stdout.splitlines() + [""]:
        if line.startswith("|---"):
            continue  # the separator under a header
        if line.startswith("| "):
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            tables, current = tables + [current], []
    return tables


def test_experiment_scores_every_row_and_a_rerun_skips_what_is_complete(tmp_path):
    root = tmp_path / "experiment"
    run = _experiment(root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((root / "experiment.json").read_text())
    rows = {row["key"]: row for row in result["rows"]}
    assert list(rows) == list(ROWS)
    for key, (run_name, policy) in ROWS.items():
        row = rows[key]
        assert row["run"] == run_name and row["memory_policy"] == policy, key
        assert [g["gap_seconds"] for g in row["gaps"]] == [0.0, 1.0]
        assert all(0.0 <= g["recall"] <= 1.0 and g["control_recall"] is not None for g in row["gaps"])
        report = json.loads(Path(row["report"]).read_text())
        assert report["checkpoint"] == str(root / run_name) and report["num_clips"] == 2
        assert row["training_seconds"] > 0
    # the same held-out clips for every row, and each control swapped in another clip's context
    clips = {key: [[c["index"] for c in g["clips"]] for g in json.loads(Path(r["report"]).read_text())["gaps"]]
             for key, r in rows.items()}
    assert all(value == [[0, 1], [0, 1]] for value in clips.values())
    control = json.loads(Path(rows["c"]["report"]).read_text())["gaps"][0]["control_clips"]
    assert [c["context_from"] for c in control] == [1, 0]
    # equal budgets from the same init: every student ran 1 step starting from <root>/ode_init
    for stage in STUDENTS:
        assert json.loads((root / stage / "run_status.json").read_text())["step"] == 1, stage
        assert f"init_checkpoint: {root / 'ode_init'}" in (root / stage / "config.yaml").read_text()
    assert (root / "experiment.png").stat().st_size > 0
    tables = _tables(run.stdout)
    assert len(tables) == 3, tables
    table, colours, paired = tables
    assert table[0][:2] == ["row", "effective context (s)"] and len(table) == 1 + len(ROWS)
    assert "\n|---|---|" in run.stdout  # the markdown separator under the header
    assert [line[0] for line in table[1:]] == [row["label"] for row in result["rows"]]
    # the colour diagnostic: one "recall (control)" cell per gap, as in the JSON
    assert colours[0] == ["row", "effective context, colour (s)", "colour @ 0 s (control)", "colour @ 1 s (control)"]
    first = result["rows"][0]
    colour_length = first["effective_colour_context_seconds"]
    assert colours[1][1] == ("undefined" if colour_length is None else f"{colour_length:g}")
    assert colours[1][2] == f"{first['gaps'][0]['colour_recall']:.2f} ({first['gaps'][0]['control_colour_recall']:.2f})"
    assert (root / "experiment_colour.png").stat().st_size > 0
    # (c) against (b') clip by clip: each gap's mean difference of the two reports' per-clip scores
    per_clip = {key: [[c["colour_recall"] for c in g["clips"]] for g in json.loads(Path(rows[key]["report"])
                                                                                  .read_text())["gaps"]]
                for key in ("c", "b_slowfast")}
    for gap, line in enumerate(paired[1:]):
        difference = [x - y for x, y in zip(per_clip["c"][gap], per_clip["b_slowfast"][gap])]
        assert line[0] == f"{gap:g} s"
        assert line[1].startswith(f"{sum(difference) / len(difference):+.2f} [")
        assert line[1].endswith(f"{sum(d > 0 for d in difference)} / {sum(d < 0 for d in difference)}")
    assert result["paired"][0]["first"] == "(c) Context Forcing"

    reports = {key: Path(row["report"]).stat().st_mtime_ns for key, row in rows.items()}
    again = _experiment(root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "to train nothing" in again.stdout and "[1/" not in again.stdout
    assert {key: Path(row["report"]).stat().st_mtime_ns for key, row in rows.items()} == reports
    assert json.loads((root / "experiment.json").read_text())["training_seconds"] == result["training_seconds"]
    assert _tables(again.stdout) == [table, colours, paired]
