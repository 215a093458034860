"""`ctxf-generate --interactive`: prompts from standard input, a video that grows, clean stops (acceptance 3)."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import av
from safetensors.torch import load_file

from ctxf.inference.cli import main


def decoded_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def wait_for_line(lines: list[str], stream, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} within {timeout} s; got:\n{''.join(lines)}")


def test_sigint_leaves_every_finished_chunk_playable_and_a_complete_record(tmp_path):
    out = tmp_path / "live"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "ctxf.inference", "--interactive", "--output-dir", str(out)],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=env)
    lines: list[str] = []
    try:
        wait_for_line(lines, process.stderr, "chunk 1:", timeout=120)
        process.stdin.write("the square turns blue\n")
        process.stdin.flush()
        wait_for_line(lines, process.stderr, "(prompt: the square turns blue)", timeout=60)
        assert decoded_frames(out / "video.mp4") >= 3  # playable while it grows
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines) + err
    assert "Traceback" not in err
    record = json.loads((out / "generation.json").read_text())
    latents = load_file(str(out / "latents.safetensors"))["latents"]
    frames = record["summary"]["latent_frames"]
    assert record["summary"]["stopped"] == "SIGINT"
    assert frames == latents.shape[2] == 3 * len(record["chunks"]) >= 6
    assert decoded_frames(out / "video.mp4") == frames  # pixel codec: one video frame per latent frame
    (switch,) = record["prompts"]["switches"]
    assert switch["prompt"] == "the square turns blue" and switch["mode"] == "recache" and switch["first_frame"] >= 3


def test_end_of_input_stops_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("snow falls\n\nthe square turns blue\n"))
    out = tmp_path / "eof"
    assert main(["--interactive", "--output-dir", str(out)]) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["summary"]["stopped"] == "end of input"
    # input is read in the background, so chunks may or may not come before its end
    frames = record["summary"]["latent_frames"]
    assert frames == 0 or decoded_frames(out / "video.mp4") == frames
    assert [s["prompt"] for s in record["prompts"]["switches"]] == ["snow falls", "the square turns blue"]
    assert "stopped early (end of input)" in capsys.readouterr().out


def test_seconds_bounds_an_interactive_stream(tmp_path, monkeypatch):
    read, write = os.pipe()  # standard input that stays open: only --seconds ends the stream
    monkeypatch.setattr(sys, "stdin", os.fdopen(read))
    out = tmp_path / "bounded"
    try:
        assert main(["--interactive", "--seconds", "1.5", "--output-dir", str(out)]) == 0
    finally:
        os.close(write)
    record = json.loads((out / "generation.json").read_text())
    assert record["summary"]["stopped"] == "done" and record["summary"]["latent_frames"] == 6
    assert decoded_frames(out / "video.mp4") == 6
