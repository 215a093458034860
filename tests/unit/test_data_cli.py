"""The data CLIs answer --help, refuse bad input with a message, and the data benchmark still runs."""

import importlib.util
import json
from pathlib import Path

import pytest

from data_pipeline import make_curtain, manifest, videos_to_shards
from data_pipeline.cli_common import format_duration

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


def curtain_args(out, *extra):
    return ["--out", str(out), "--train-clips", "5", "--heldout-clips", "0", "--max-gap", "4",
            "--max-shard-samples", "2", *extra]


def interrupt(split_dir):
    """What a run killed while writing its third shard leaves: two complete shards and a partial one."""
    (split_dir / "manifest.json").unlink()
    (split_dir / "shard-000002.tar").rename(split_dir / "shard-000002.tar.partial")
    with open(split_dir / "shard-000002.tar.partial", "r+b") as handle:
        handle.truncate(1000)


def test_an_interrupted_curtain_run_is_refused_in_one_line_then_resumed(tmp_path, capsys):
    assert make_curtain.main(curtain_args(tmp_path / "fresh")) == 0
    fresh = json.loads((tmp_path / "fresh" / "train" / "manifest.json").read_text())
    assert make_curtain.main(curtain_args(tmp_path / "cut")) == 0
    interrupt(tmp_path / "cut" / "train")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        make_curtain.main(curtain_args(tmp_path / "cut"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    refusal = err.strip().splitlines()[-1]
    assert "--resume" in refusal and "--overwrite" in refusal and "interrupted" in refusal
    assert make_curtain.main(curtain_args(tmp_path / "cut", "--resume")) == 0
    resumed = json.loads((tmp_path / "cut" / "train" / "manifest.json").read_text())
    assert resumed["shards"] == fresh["shards"]  # same names, counts and sha256 as an uninterrupted run
    assert resumed["resumed_with_samples"] == 4
    assert not list((tmp_path / "cut" / "train").glob("*.partial"))
    assert manifest.main([str(tmp_path / "cut" / "train" / "manifest.json")]) == 0


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_curtain.main(curtain_args(tmp_path, "--resume", "--overwrite"))
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("other", [["--train-clips", "3"], ["--seed", "1"], ["--latent-dtype", "bfloat16"]])
def test_resuming_with_other_arguments_is_refused(tmp_path, capsys, other):
    assert make_curtain.main(curtain_args(tmp_path)) == 0
    interrupt(tmp_path / "train")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        make_curtain.main(curtain_args(tmp_path, "--resume", *other))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "arguments of the interrupted run" in err and "Traceback" not in err


@pytest.mark.parametrize("seconds, shown", [(42, "42.0 s"), (750, "12.5 min"), (3 * 3600 + 720, "3.20 h")])
def test_durations_are_shown_in_a_unit_that_fits(seconds, shown):
    assert format_duration(seconds) == shown
