"""The one-command chain (stage 0 -> ODE pairs -> ODE init -> context DMD -> video), scaled to a
few steps: each stage starts from the previous one's run and the final student streams a video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gloo_workers import free_port

REPO = Path(__file__).resolve().parents[2]


def _chain(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxf.chain", "--root", str(root), "--pairs", "4", "--seconds", "2",
                           "--master-port", str(free_port()), "--set", "train.num_steps=2",
                           "--set", f"data.cache_dir={root / 'cache'}", "--set", "data.default_clips=8",
                           "--set", "ode_pairs:distill.ode_solver_substeps=1"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def test_chain_ends_in_a_student_that_streams_a_video(tmp_path):
    root = tmp_path / "chain"
    run = _chain(root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("teacher", "ode_init", "context_dmd"):
        status = json.loads((root / stage / "run_status.json").read_text())
        assert status == {"status": "complete", "step": 2, "signal": None}, stage
        manifest = json.loads((root / stage / "checkpoints" / "step_00000002" / "manifest.json").read_text())
        assert manifest["stage"] == stage
    # each stage was started from the previous one by name
    ode_config = (root / "ode_init" / "config.yaml").read_text()
    assert f"teacher_checkpoint: {root / 'teacher'}" in ode_config
    assert f"init_checkpoint: {root / 'ode_init'}" in (root / "context_dmd" / "config.yaml").read_text()
    generation = json.loads((root / "generate" / "generation.json").read_text())
    assert generation["config"]["inference"]["checkpoint"] == str(root / "context_dmd")
    assert (root / "generate" / "video.mp4").stat().st_size > 0
    assert generation["summary"]["latent_frames"] == 8
