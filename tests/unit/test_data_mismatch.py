"""Samples that do not fit the configured model, and shards that differ from their manifest, are
skipped and counted where they are read, never ending an epoch in collate."""

import logging
import tarfile

import pytest
import torch
from safetensors.torch import save as save_safetensors

from ctxf.config import load_config
from ctxf.data import sample_checks
from ctxf.data.format import encode_sample
from ctxf.data import loader as loader_module
from ctxf.data.loader import ShardLoader
from ctxf.data.sample_checks import SampleShape
from data_fixtures import CHANNELS, HEIGHT, TEXT_DIM, WIDTH, write_tiny_shards
from data_pipeline.shards import AtomicShardWriter, write_manifest

FITS = SampleShape(latent_channels=CHANNELS, latent_height=HEIGHT, latent_width=WIDTH, text_dim=TEXT_DIM)


def write_odd_shard(out_dir, samples):
    """One shard of (key, latents, text) written as given, tensors stored with their own dtype."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with AtomicShardWriter(out_dir, max_bytes=1e12, max_samples=10**9) as writer:
        for key, latents, text in samples:
            sample = encode_sample(key, torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), {})
            sample["latents.safetensors"] = save_safetensors({"latents": latents.contiguous()})
            sample["text.safetensors"] = save_safetensors({"text": text.contiguous()})
            sample["json"] = b"{}"
            writer.write(sample)
    return str(out_dir / writer.shards[0]["name"])


def good(frames=6):
    return torch.ones(CHANNELS, frames, HEIGHT, WIDTH), torch.ones(2, TEXT_DIM)


def test_shape_mismatches_are_skipped_counted_and_named(tmp_path, caplog):
    paths, samples = write_tiny_shards(tmp_path / "good", [3])
    latents, text = good()
    odd = write_odd_shard(tmp_path / "odd", [
        ("more-channels", torch.ones(CHANNELS + 14, 6, HEIGHT, WIDTH), text),
        ("bigger-frames", torch.ones(CHANNELS, 6, 4, 4), text),
        ("wider-text", latents, torch.ones(2, 64)),
        ("fourth", torch.ones(CHANNELS + 1, 6, HEIGHT, WIDTH), text)])
    caplog.set_level(logging.WARNING, logger="ctxf.data")
    loader = ShardLoader(paths + [odd], batch_size=2, max_length=8, shuffle_buffer=0, sample_shape=FITS)
    for _ in range(2):  # every epoch, not only the first
        assert sorted(key for batch in loader for key in batch.keys) == sorted(samples)
    assert loader.counters["mismatched_samples"] == 8 and loader.counters["corrupt_samples"] == 0
    assert "more-channels" in caplog.text and "model.in_channels" in caplog.text
    assert "bigger-frames" in caplog.text and "wider-text" in caplog.text and "model.text_dim" in caplog.text
    assert "fourth" not in caplog.text  # named: the first few; the rest counted


def test_without_the_check_collate_still_refuses_mixed_shapes(tmp_path):
    paths, _ = write_tiny_shards(tmp_path / "good", [1])
    odd = write_odd_shard(tmp_path / "odd", [("wide", torch.ones(CHANNELS, 6, 4, 4), torch.ones(2, TEXT_DIM))])
    loader = ShardLoader(paths + [odd], batch_size=2, max_length=8, shuffle_buffer=0)
    with pytest.raises(ValueError, match="different shapes"):
        list(loader)


def test_sample_shape_comes_from_the_config():
    cfg = load_config("tiny", ["model.text_dim=24"])
    assert SampleShape.from_config(cfg) == SampleShape(latent_channels=12, latent_height=8, latent_width=8,
                                                       text_dim=24)


def test_exact_dtypes_are_converted_once_and_inexact_ones_refused(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sample_checks, "_converted_dtypes", set())
    latents, text = good()
    exact = latents.double() * 0.5 + torch.arange(6).view(1, 6, 1, 1)
    odd = write_odd_shard(tmp_path / "odd", [
        ("as-float64", exact, text), ("as-int32", (latents * 3).to(torch.int32), text),
        ("again-float64", exact + 1, text), ("inexact-float64", latents.double() + 1e-12, text),
        ("large-int64", torch.full_like(latents, 2**24 + 1, dtype=torch.int64), text),
        ("text-float64", latents, text.double() / 3)])
    caplog.set_level(logging.WARNING, logger="ctxf.data")
    loader = ShardLoader([odd], batch_size=1, max_length=8, shuffle_buffer=0, sample_shape=FITS)
    batches = {batch.keys[0]: batch for batch in loader}
    assert sorted(batches) == ["again-float64", "as-float64", "as-int32"]
    assert torch.equal(batches["as-float64"].latents[0].double(), exact)
    assert torch.equal(batches["as-int32"].latents[0], latents * 3)
    assert loader.counters["mismatched_samples"] == 3
    assert caplog.text.count("converted to float32 exactly") == 2  # once for float64, once for int32
    for key in ("inexact-float64", "large-int64", "text-float64"):
        assert key in caplog.text


def test_altered_shard_from_a_manifest_is_skipped_and_counted(tmp_path, caplog):
    paths, samples = write_tiny_shards(tmp_path, [2, 3])
    with tarfile.open(paths[1]) as archive:
        member = archive.getmember("sample-00002.latents.safetensors")
    last_byte = member.offset_data + member.size - 1
    with open(paths[1], "r+b") as handle:  # flip a byte of a tensor value: the tar and sample still read
        handle.seek(last_byte)
        byte = handle.read(1)
        handle.seek(last_byte)
        handle.write(bytes([byte[0] ^ 0x01]))
    caplog.set_level(logging.WARNING, logger="ctxf.data")
    manifest = str(tmp_path / "manifest.json")
    loader = ShardLoader(manifest, batch_size=1, max_length=8, shuffle_buffer=0)
    keys = sorted(key for batch in loader for key in batch.keys)
    assert keys == ["sample-00000", "sample-00001"]
    assert loader.counters["altered_shards"] == 1 and "shard-000001.tar" in caplog.text
    unchecked = ShardLoader(manifest, batch_size=1, max_length=8, shuffle_buffer=0, verify_checksums=False)
    assert len([key for batch in unchecked for key in batch.keys]) == len(samples)
    assert unchecked.counters["altered_shards"] == 0


def test_the_config_switch_reaches_the_loader(tmp_path):
    write_tiny_shards(tmp_path, [1])
    cfg = load_config("tiny", [f"data.shards={tmp_path / 'manifest.json'}"])
    assert ShardLoader.from_config(cfg, rank=0, world_size=1).settings.checksums
    cfg = load_config("tiny", [f"data.shards={tmp_path / 'manifest.json'}", "data.verify_checksums=false"])
    assert not ShardLoader.from_config(cfg, rank=0, world_size=1).settings.checksums


def test_the_idle_worker_warning_is_given_once(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(loader_module, "_warned", set())
    paths, _ = write_tiny_shards(tmp_path, [1, 1])
    caplog.set_level(logging.WARNING, logger="ctxf.data")
    for _ in range(3):
        ShardLoader(paths, batch_size=1, max_length=8, num_workers=2, world_size=2)
    assert caplog.text.count("nothing to read") == 1
