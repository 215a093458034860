"""What every benchmark writes: `<name>.json` with its raw numbers and `<name>.png` with its plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(out_dir: str | Path, name: str, report: dict, plot: Callable[[Path], None],
                 note: str = "") -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(png_path)
    print(f"{note}wrote {json_path} and {png_path}")
