"""The data CLIs answer --help, refuse bad input with a message, and the data benchmark still runs."""

import importlib.util
import json
from pathlib import Path

import pytest

from data_pipeline import make_curtain, manifest, videos_to_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cli", [make_curtain, manifest, videos_to_shards])
def test_every_cli_has_help(cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m data_pipeline." in capsys.readouterr().out


def test_videos_to_shards_without_inputs_says_what_to_pass(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        videos_to_shards.main(["--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "name video files or directories" in capsys.readouterr().err


def test_writing_into_an_earlier_run_needs_overwrite(tmp_path, capsys):
    arguments = ["--out", str(tmp_path), "--train-clips", "1", "--heldout-clips", "1", "--max-gap", "4"]
    assert make_curtain.main(arguments) == 0
    with pytest.raises(SystemExit) as exit_info:
        make_curtain.main(arguments)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--overwrite" in err and "--resume" in err
    assert make_curtain.main(arguments + ["--overwrite"]) == 0


def test_data_benchmark_runs_and_writes_json_and_png(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "benchmarks" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--out", str(tmp_path), "--clips", "8", "--clips-per-shard", "4", "--epochs", "1",
                       "--workers", "0", "1", "--steps", "1", "--warmup-steps", "0", "--repeats", "1"]) == 0
    results = json.loads((tmp_path / "bench_data.json").read_text())
    assert [r["samples"] for r in results["loader"]] == [8, 8]
    assert results["trainer"]["samples_per_second"] > 0 and set(results["ratios"]) == {"0", "1"}
    assert (tmp_path / "bench_data.png").stat().st_size > 1000
