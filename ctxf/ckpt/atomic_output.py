"""Outputs that appear whole or not at all: write into a temporary sibling, rename at the end.

    with atomic_output(dst, overwrite=False) as tmp:   # tmp: a path beside dst (same file system)
        write everything to tmp                        # a file or a directory
    # dst now is what was written; on an exception dst is untouched and tmp is gone
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from ctxf.ckpt.wan_keys import CheckpointError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `dst`; move it to `dst` only when the block finishes. An
    existing `dst` is refused unless `overwrite`, and then replaced only after success."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; choose another destination or pass --overwrite")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
            os.replace(tmp, dst)
            _remove(old)
        else:
            os.replace(tmp, dst)
    finally:
        _remove(tmp)
