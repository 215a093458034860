"""One stream of video under a prompt that can change while it runs.

`StreamingSession` owns the prompt the generator follows now, the noise generator and the
record of every switch. At a switch the memory follows the new prompt as
`inference.prompt_switch` says:
- `recache` (default): recompute the cached frames' keys/values under the new prompt
  (`StreamingGenerator.recache`), so the scene changes without a cut;
- `keep`: keep the cache as it is; only the new chunks see the new prompt;
- `flush`: empty the memory; the next chunk starts a new shot.
A switch to a prompt whose embedding equals the current one changes nothing (recorded as
`unchanged`), so an unchanged prompt leaves the generation bit-identical.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ctxf.config import PROMPT_SWITCH_MODES
from ctxf.inference.generator import StreamingGenerator
from ctxf.inference.prompts import PromptSource


@dataclass
class PromptSwitch:
    prompt: str
    first_frame: int  # first generated latent frame under the new prompt (0: the first generated frame)
    video_seconds: float  # the same, in seconds of generated video
    mode: str  # recache | keep | flush | unchanged
    frames_recached: int  # cached frames whose keys/values were recomputed
    seconds: float  # wall time of the switch: encoding the prompt and updating the memory


class StreamingSession:
    def __init__(self, generator: StreamingGenerator, encode_prompt: Callable[[str], torch.Tensor], prompt: str,
                 switch_mode: str, latent_shape: tuple[int, int, int], seed: int, latent_fps: float):
        if switch_mode not in PROMPT_SWITCH_MODES:
            raise ValueError(f"inference.prompt_switch={switch_mode!r}: choose one of "
                             f"{', '.join(PROMPT_SWITCH_MODES)}")
        self.generator, self.encode_prompt = generator, encode_prompt
        self.switch_mode, self.latent_shape, self.latent_fps = switch_mode, latent_shape, latent_fps
        self.first_prompt, self.prompt, self.text = prompt, prompt, encode_prompt(prompt)
        self.noise = torch.Generator().manual_seed(seed)
        self.switches: list[PromptSwitch] = []
        self.num_generated = 0
        self.prefix_frames = 0

    def prefill(self, latents: torch.Tensor) -> None:
        """Continue these clean latents `[B, C, F, H, W]`: write them into the memory."""
        self.generator.prefill(latents, self.text)
        self.prefix_frames += latents.shape[2]

    def switch_prompt(self, prompt: str) -> PromptSwitch:
        """Follow `prompt` from the next chunk on."""
        started = time.perf_counter()
        text = self.encode_prompt(prompt)
        mode, recached = self.switch_mode, 0
        if torch.equal(text, self.text):
            mode = "unchanged"
        elif mode == "recache":
            recached = self.generator.recache(text)
        elif mode == "flush":
            self.generator.flush()
        self.prompt, self.text = prompt, text
        switch = PromptSwitch(prompt=prompt, first_frame=self.num_generated,
                              video_seconds=self.num_generated / self.latent_fps, mode=mode,
                              frames_recached=recached, seconds=time.perf_counter() - started)
        self.switches.append(switch)
        return switch

    def next_chunk(self) -> torch.Tensor:
        """The next chunk's clean latents `[B, C, num_frames_per_block, H, W]` under the current prompt."""
        chunk = self.generator.generate_chunk(self.text, self.latent_shape, self.noise)
        self.num_generated += chunk.shape[2]
        return chunk

    def stream(self, num_frames: int | None, prompts: PromptSource | None = None) -> Iterator[torch.Tensor]:
        """Yield chunks until `num_frames` latent frames exist (None: until `prompts` is exhausted),
        switching prompts as `prompts` says before each chunk; the last chunk may be trimmed."""
        while num_frames is None or self.num_generated < num_frames:
            for prompt in prompts.poll(self.num_generated) if prompts is not None else []:
                self.switch_prompt(prompt)
            if prompts is not None and prompts.exhausted:
                return
            before = self.num_generated
            chunk = self.next_chunk()
            keep = chunk.shape[2] if num_frames is None else min(chunk.shape[2], num_frames - before)
            yield chunk[:, :, :keep]
