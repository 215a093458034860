"""Where the prompt comes from while a video streams: a schedule fixed in advance, or standard input.

A schedule is a JSONL file, one switch a line, seconds counted from the first generated frame:

    {"seconds": 0, "prompt": "a red square on a striped wall"}
    {"seconds": 12.5, "prompt": "the square turns blue"}

or repeated `--prompt-at SECONDS=TEXT` flags (both can be given; they are merged). Chunks are
generated whole, so a switch takes effect at the first chunk that starts at or after its time.
A switch at 0 s sets the first prompt.

A prompt source answers `poll(next_frame)`: the prompts due before the chunk starting at latent
frame `next_frame` (counted from the first generated frame), and says when it is `exhausted`
(standard input closed: the stream stops).
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO


@dataclass(frozen=True)
class ScheduledPrompt:
    seconds: float
    prompt: str


class PromptSource(Protocol):
    exhausted: bool

    def first_prompt(self, default: str) -> str: ...

    def poll(self, next_frame: int) -> list[str]: ...


def parse_prompt_at(value: str) -> ScheduledPrompt:
    """`SECONDS=TEXT`, e.g. `12.5=the square turns blue`."""
    seconds, sep, prompt = value.partition("=")
    try:
        at = float(seconds)
    except ValueError:
        at = math.nan
    if not sep or not prompt.strip() or not math.isfinite(at) or at < 0:
        raise ValueError(f"--prompt-at {value!r}: expected SECONDS=TEXT with SECONDS >= 0, "
                         f"e.g. --prompt-at '12.5=the square turns blue'")
    return ScheduledPrompt(at, prompt.strip())


def load_schedule(path: str) -> list[ScheduledPrompt]:
    """Entries of a JSONL schedule; blank lines are skipped, anything else malformed is an error
    naming the line (a schedule is short and hand-written: a silently dropped switch would be a surprise)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"prompt schedule {path} does not exist")
    entries = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            entry = ScheduledPrompt(float(record["seconds"]), str(record["prompt"]).strip())
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            entry = None
        if entry is None or not entry.prompt or not math.isfinite(entry.seconds) or entry.seconds < 0:
            raise ValueError(f"prompt schedule {path} line {number}: expected "
                             '{"seconds": <number >= 0>, "prompt": "<text>"}, got ' + line.strip()[:80])
        entries.append(entry)
    return entries


class PromptSchedule:
    """Switches at fixed times (seconds of generated video), `latent_fps` latent frames a second."""

    exhausted = False

    def __init__(self, entries: list[ScheduledPrompt], latent_fps: float):
        self.entries = sorted(entries, key=lambda e: e.seconds)  # stable: equal times keep their order
        self.latent_fps = latent_fps
        self._next = 0

    def first_prompt(self, default: str) -> str:
        """The prompt of the first chunk: the last entry at 0 s, else `default`; consumes those entries."""
        prompt = default
        while self._next < len(self.entries) and self.entries[self._next].seconds == 0:
            prompt = self.entries[self._next].prompt
            self._next += 1
        return prompt

    def poll(self, next_frame: int) -> list[str]:
        due = []
        while (self._next < len(self.entries)
               and math.ceil(self.entries[self._next].seconds * self.latent_fps - 1e-9) <= next_frame):
            due.append(self.entries[self._next].prompt)
            self._next += 1
        return due

    def to_list(self) -> list[dict]:
        return [{"seconds": e.seconds, "prompt": e.prompt} for e in self.entries]


class StdinPrompts:
    """Lines typed on standard input, one switch a line, read by a background thread so the
    stream never waits for typing; end of input marks the source exhausted."""

    def __init__(self, stream: TextIO | None = None):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.exhausted = False
        threading.Thread(target=self._read, args=(stream or sys.stdin,), daemon=True, name="stdin-prompts").start()

    def first_prompt(self, default: str) -> str:
        return default

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            if line.strip():
                self.lines.put(line.strip())
        self.lines.put(None)

    def poll(self, next_frame: int) -> list[str]:
        due = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return due
            if line is None:
                self.exhausted = True
                return due
            due.append(line)
