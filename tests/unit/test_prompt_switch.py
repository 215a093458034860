"""Prompt switching: re-cache is exact, an unchanged prompt changes nothing, keep / flush do what they say
(acceptance 1)."""

import pytest
import torch

from ctxf.config import load_config
from ctxf.inference.generator import StreamingGenerator
from ctxf.inference.prompts import PromptSchedule, ScheduledPrompt
from ctxf.inference.session import StreamingSession
from ctxf.memory.cache import build_memory
from ctxf.memory.view import MemoryView
from ctxf.models.text_encoder import HashingTextEncoder
from ctxf.models.wan import WanDiT

SMALL = ["memory.num_sink_frames=1", "memory.num_fast_frames=3", "memory.num_slow_frames=2",
         "memory.window_frames=5", "memory.rope_length=10", "memory.surprise_threshold=0.999",
         "diffusion.denoising_steps=[1000,500]"]


def make(policy="slow_fast", switch="recache", overrides=()):
    cfg = load_config("tiny", [f"memory.policy={policy}", *SMALL, *overrides])
    torch.manual_seed(0)
    model = WanDiT(cfg.model).eval()
    encoder = HashingTextEncoder(cfg.model.text_dim, cfg.text.max_length)
    generator = StreamingGenerator(model, build_memory(cfg), cfg.diffusion, cfg.video.num_frames_per_block)
    shape = (cfg.model.in_channels, cfg.video.latent_height, cfg.video.latent_width)
    session = StreamingSession(generator, lambda p: encoder.encode([p]), "a red square", switch, shape, seed=3,
                               latent_fps=cfg.video.latent_fps)
    return cfg, model, encoder, session


@torch.no_grad()
def fresh_pass(model, memory, latents_by_frame, text, block, context_t=0.0):
    """The oracle: the kept frames re-encoded chunk group by chunk group through the KV-cache path, each
    group attending to the groups before it, at the positions the memory gives them now."""
    positions = dict(zip(memory.frame_indices, memory.view(block).key_frame_positions.tolist()))
    groups = {}
    for index in memory.frame_indices:
        groups.setdefault(index // block, []).append(index)  # no prefix: chunk g holds frames 3g..3g+2
    keys = [torch.empty(1, 0, model.cfg.num_heads, model.cfg.head_dim) for _ in model.blocks]
    values = [k.clone() for k in keys]
    past_positions = []
    for frames in groups.values():
        view = MemoryView(keys=keys, values=values, key_frame_positions=torch.tensor(past_positions, dtype=torch.long),
                          query_frame_positions=torch.tensor([positions[i] for i in frames]))
        latents = torch.stack([latents_by_frame[i] for i in frames], dim=2)
        _, kv = model(latents, torch.full((1,), context_t), text, memory=view, return_kv=True)
        keys = [torch.cat([k, new_k], dim=1) for k, (new_k, _) in zip(keys, kv)]
        values = [torch.cat([v, new_v], dim=1) for v, (_, new_v) in zip(values, kv)]
        past_positions += [positions[i] for i in frames]
    return keys, values


@pytest.mark.parametrize("policy", ["slow_fast", "sink_local", "full"])
def test_recache_equals_a_fresh_pass_of_the_kept_frames(policy):
    cfg, model, encoder, session = make(policy)
    generated = torch.cat(list(session.stream(24)), dim=2)
    memory = session.generator.memory
    kept = memory.frame_indices
    assert policy == "full" or len(kept) < 21  # something was evicted
    latents_by_frame = {i: generated[:, :, i] for i in kept}  # the memory must keep exactly these
    held, _ = memory.held_latents()
    assert torch.equal(held, torch.stack([latents_by_frame[i] for i in kept], dim=2))
    before = [memory.store.layer(i) for i in range(len(model.blocks))]
    before = [(k.clone(), v.clone()) for k, v in before]

    switch = session.switch_prompt("the square turns blue")
    assert switch.mode == "recache" and switch.frames_recached == len(kept) and switch.first_frame == 24
    new_text = encoder.encode(["the square turns blue"])
    keys, values = fresh_pass(model, memory, latents_by_frame, new_text, cfg.video.num_frames_per_block)
    for layer in range(len(model.blocks)):
        k, v = memory.store.layer(layer)
        assert (k - keys[layer]).abs().max() <= 1e-5 and (v - values[layer]).abs().max() <= 1e-5
        if layer > 0:  # layer 0's keys never see the text; deeper ones must have changed
            assert not torch.allclose(k, before[layer][0], atol=1e-4)
    assert memory.frame_indices == kept


def run(switch, schedule, seconds=6.0):
    cfg, _, _, session = make(switch=switch)
    prompts = PromptSchedule(schedule, cfg.video.latent_fps)
    chunks = list(session.stream(int(seconds * cfg.video.latent_fps), prompts))
    return torch.cat(chunks, dim=2), session


def test_unchanged_prompt_leaves_generation_bit_identical():
    plain, _ = run("recache", [])
    same, session = run("recache", [ScheduledPrompt(1.5, "a red square"), ScheduledPrompt(3.0, "a  RED square")])
    assert torch.equal(plain, same)
    assert [s.mode for s in session.switches] == ["unchanged", "unchanged"]


@pytest.mark.parametrize("switch", ["recache", "keep", "flush"])
def test_a_switch_changes_only_what_follows_it(switch):
    plain, _ = run(switch, [])
    switched, session = run(switch, [ScheduledPrompt(2.0, "the square turns blue")])
    (record,) = session.switches
    assert record.first_frame == 9 and record.video_seconds == 2.25  # first chunk boundary at or after 2 s
    assert record.mode == switch
    assert torch.equal(plain[:, :, :9], switched[:, :, :9])
    assert not torch.allclose(plain[:, :, 9:12], switched[:, :, 9:12])


def test_keep_leaves_the_cache_and_flush_empties_it():
    _, _, _, session = make(switch="keep")
    list(session.stream(12))
    memory = session.generator.memory
    before = [tuple(t.clone() for t in memory.store.layer(i)) for i in range(memory.store.num_layers)]
    session.switch_prompt("the square turns blue")
    assert all(torch.equal(a, b) for pair, layer in zip(before, range(len(before)))
               for a, b in zip(pair, memory.store.layer(layer)))

    _, _, _, session = make(switch="flush")
    list(session.stream(12))
    session.switch_prompt("the square turns blue")
    assert session.generator.memory.frame_indices == [] and session.generator.memory.cache_bytes() == 0
    chunk = session.next_chunk()
    stats = session.generator.stats[-1]
    assert stats.first_frame == 12 and stats.num_cached_frames == 0 and stats.max_rope_position == 2
    assert chunk.shape[2] == 3


def test_recache_follows_context_noise():
    """With noisy context, re-cache re-reads the noised latents the refresh read (not fresh noise)."""
    cfg, model, encoder, session = make("full", overrides=["diffusion.context_noise=100"])
    list(session.stream(6))
    memory = session.generator.memory
    held, _ = memory.held_latents()
    latents_by_frame = {i: held[:, :, n] for n, i in enumerate(memory.frame_indices)}
    session.switch_prompt("the square turns blue")
    keys, values = fresh_pass(model, memory, latents_by_frame, encoder.encode(["the square turns blue"]),
                              cfg.video.num_frames_per_block, context_t=100.0)
    k, v = memory.store.layer(1)
    assert (k - keys[1]).abs().max() <= 1e-5 and (v - values[1]).abs().max() <= 1e-5


def test_recache_after_a_prefix_groups_frames_by_the_pass_that_wrote_them():
    """A 4-frame prefix is prefilled as chunks [0, 1, 2] and [3], so generated chunks start at frame 4;
    the re-cache must group frames as those passes did, not by index // 3."""
    cfg, model, encoder, session = make("full")
    prefix = torch.randn(1, cfg.model.in_channels, 4, cfg.video.latent_height, cfg.video.latent_width)
    session.prefill(prefix)
    generated = torch.cat(list(session.stream(3)), dim=2)
    memory = session.generator.memory
    latents = torch.cat([prefix, generated], dim=2)
    text = encoder.encode(["the square turns blue"])
    session.switch_prompt("the square turns blue")
    # oracle: the three passes again, through the KV-cache path, under the new prompt
    keys = [torch.empty(1, 0, cfg.model.num_heads, cfg.model.head_dim) for _ in model.blocks]
    values = [k.clone() for k in keys]
    for frames in ([0, 1, 2], [3], [4, 5, 6]):
        view = MemoryView(keys=keys, values=values, key_frame_positions=torch.arange(frames[0]),
                          query_frame_positions=torch.tensor(frames))
        with torch.no_grad():
            _, kv = model(latents[:, :, frames], torch.zeros(1), text, memory=view, return_kv=True)
        keys = [torch.cat([k, new_k], dim=1) for k, (new_k, _) in zip(keys, kv)]
        values = [torch.cat([v, new_v], dim=1) for v, (_, new_v) in zip(values, kv)]
    for layer in range(len(model.blocks)):
        k, v = memory.store.layer(layer)
        assert (k - keys[layer]).abs().max() <= 1e-5 and (v - values[layer]).abs().max() <= 1e-5
