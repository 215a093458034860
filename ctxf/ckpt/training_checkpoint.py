"""The training checkpoint layout: step directories, made visible atomically, verified on load.

    <train.output_dir>/checkpoints/
      latest                         "step_00000120": moved (os.replace) only after the step is complete
      step_00000120/
        <role>/                      DeepSpeed's `engine.save_checkpoint(<role>, tag="zero")`: its own
                                     sharded layout (zero/zero_pp_rank_R_mp_rank_00_{model,optim}_states.pt)
        <role>_ema.safetensors       optional: EMA weights of the role, whole, diffusers key names
        <role>_lora.safetensors      optional: the role's LoRA adapter alone (`<layer>.lora_A/B`)
        <role>_lora.json             optional: {"rank", "alpha", "targets", "base"}
        trainer/rank_00000.pt        per-rank trainer state (step, RNG states, loader position, buffers)
        manifest.json                written last: format, step, stage, roles, world size, config and
                                     the size of every file above
      <role>_base.safetensors        LoRA runs: the frozen base weights, written once (a base that came
                                     from a checkpoint on disk is named in `<role>_lora.json` instead)

Every rank writes its files into `step_XXXXXXXX.partial/`; after a barrier rank 0 lists them into
`manifest.json`, renames the directory to `step_XXXXXXXX` and then moves `latest`. A directory
without a manifest, or whose files do not match it (missing, truncated), is never loaded:
`find_resume_step` skips it with a warning and takes the previous complete step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from ctxf.ckpt.wan_keys import CheckpointError

logger = logging.getLogger("ctxf.ckpt")

FORMAT = "ctxf-train-step"
VERSION = 1
MANIFEST = "manifest.json"
LATEST = "latest"
DEEPSPEED_TAG = "zero"
PARTIAL_SUFFIX = ".partial"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def partial_step_dir(checkpoints_dir: Path, step: int) -> Path:
    return Path(checkpoints_dir) / (step_dir_name(step) + PARTIAL_SUFFIX)


def trainer_state_path(step_dir: Path, rank: int) -> Path:
    return Path(step_dir) / "trainer" / f"rank_{rank:05d}.pt"


def is_step_dir(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file() or bool(_STEP_DIR.match(Path(path).name))


def finalize_step(partial: Path, manifest: dict) -> Path:
    """Rank 0, after every rank wrote into `partial`: record the files, rename, move `latest`."""
    partial = Path(partial)
    files = {str(p.relative_to(partial)): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
    content = {"format": FORMAT, "version": VERSION, **manifest, "files": files}
    _write_atomic(partial / MANIFEST, json.dumps(content, indent=2))
    final = partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)])
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    _write_atomic(final.parent / LATEST, final.name + "\n")
    return final


def read_manifest(step_dir: Path) -> dict:
    """The manifest of a complete step directory; CheckpointError naming the file otherwise."""
    step_dir = Path(step_dir)
    path = step_dir / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{step_dir} is not a complete training step: {MANIFEST} is missing (the save was "
                              f"interrupted); resume from an earlier step")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is damaged ({err}); resume from an earlier step") from err
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ctxf training step manifest (format {manifest.get('format')!r})")
    return manifest


def verify_step(step_dir: Path) -> dict:
    """Check every file the manifest lists exists with its recorded size; returns the manifest."""
    step_dir = Path(step_dir)
    manifest = read_manifest(step_dir)
    for name, size in manifest["files"].items():
        path = step_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from training step {step_dir.name}; the checkpoint is "
                                  f"incomplete, resume from an earlier step")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"{path} is truncated or altered ({actual} bytes, the manifest says {size}); "
                                  f"resume from an earlier step")
    return manifest


def list_steps(checkpoints_dir: Path) -> list[Path]:
    """Step directories (complete or not), newest first."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    steps = [p for p in checkpoints_dir.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(steps, key=lambda p: p.name, reverse=True)


def find_resume_step(checkpoints_dir: Path) -> Path | None:
    """The step `latest` names if it verifies, else the newest step that does (with a warning
    naming what was skipped); None when there is no complete step."""
    checkpoints_dir = Path(checkpoints_dir)
    candidates = list_steps(checkpoints_dir)
    pointer = checkpoints_dir / LATEST
    if pointer.is_file():
        named = checkpoints_dir / pointer.read_text().strip()
        candidates = [named] + [p for p in candidates if p != named]
    for step_dir in candidates:
        try:
            verify_step(step_dir)
        except CheckpointError as err:
            logger.warning("skipping checkpoint: %s", err)
            continue
        return step_dir
    return None


def resolve_step_dir(path: str | Path) -> Path:
    """A step directory, or a run / checkpoints directory (its newest complete step)."""
    path = Path(path)
    if (path / MANIFEST).is_file() or _STEP_DIR.match(path.name):
        verify_step(path)
        return path
    for checkpoints_dir in (path, path / "checkpoints"):
        if (checkpoints_dir / LATEST).is_file() or list_steps(checkpoints_dir):
            found = find_resume_step(checkpoints_dir)
            if found is None:
                raise CheckpointError(f"{checkpoints_dir} holds no complete training step")
            return found
    raise CheckpointError(f"{path} is not a training step directory (no {MANIFEST}) nor a run directory with "
                          f"checkpoints/")


def prune_steps(checkpoints_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete steps (and stale .partial directories); returns
    what was removed. The step `latest` names is always kept."""
    checkpoints_dir = Path(checkpoints_dir)
    pointer = checkpoints_dir / LATEST
    protected = pointer.read_text().strip() if pointer.is_file() else None
    removed = []
    complete = [p for p in list_steps(checkpoints_dir) if (p / MANIFEST).is_file()]
    for step_dir in complete[keep:]:
        if step_dir.name != protected:
            shutil.rmtree(step_dir, ignore_errors=True)
            removed.append(step_dir)
    return removed


def remove_stale_partials(checkpoints_dir: Path) -> None:
    """Leftovers of saves that were interrupted (rank 0, before a new save)."""
    for path in Path(checkpoints_dir).glob("step_*" + PARTIAL_SUFFIX):
        shutil.rmtree(path, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
