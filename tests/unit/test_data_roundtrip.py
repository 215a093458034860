"""Acceptance 1: what the pipeline writes comes back bit-identical; shards are whole; manifests hold."""

import hashlib
import json
import tarfile

import pytest
import torch
from safetensors.torch import load as load_safetensors

from ctxf.config import load_config
from ctxf.data.format import decode_sample, encode_sample
from ctxf.data.loader import ShardLoader
from ctxf.models.codec import PixelCodec, uint8_to_video
from ctxf.models.text_encoder import HashingTextEncoder
from data_pipeline import manifest as manifest_cli
from data_pipeline.clip_encoding import ClipEncoder
from data_pipeline.curtain import CurtainSpec, make_clip
from data_pipeline.make_curtain import write_split
from data_pipeline.shards import AtomicShardWriter

SPEC = CurtainSpec(num_frames=52, gap_range=(1, 12))


@pytest.fixture(scope="module")
def curtain_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("roundtrip") / "train"
    write_split(SPEC, seed=7, split="train", count=6, out_dir=out, encoder=ClipEncoder(load_config("tiny")),
                max_samples=4, previews=1, caption_txt=True)
    return out


def tar_members(path):
    """Members of a shard read with the standard library: an oracle independent of webdataset."""
    with tarfile.open(path) as archive:
        return {info.name: archive.extractfile(info).read() for info in archive}


def test_curtain_clips_come_back_bit_identical(curtain_split):
    members = {}
    for shard in sorted(curtain_split.glob("shard-*.tar")):
        members.update(tar_members(shard))
    cfg = load_config("tiny")
    hashing = HashingTextEncoder(cfg.model.text_dim, cfg.text.max_length, cfg.text.seed)
    for index in range(6):
        key = f"curtain-train-{index:06d}"
        clip = make_clip(SPEC, 7, "train", index)
        video = uint8_to_video(torch.from_numpy(clip.frames)[None])
        expected_latents = PixelCodec(cfg.codec.pixel_patch).encode(video)[0]
        stored_latents = load_safetensors(members[f"{key}.latents.safetensors"])["latents"]
        assert stored_latents.dtype == torch.float32 and torch.equal(stored_latents, expected_latents)
        stored_text = load_safetensors(members[f"{key}.text.safetensors"])["text"]
        assert stored_text.dtype == torch.bfloat16
        assert torch.equal(stored_text, hashing.encode_valid([clip.truth.caption])[0].to(torch.bfloat16))
        meta = json.loads(members[f"{key}.json"])
        assert meta["curtain"] == json.loads(json.dumps(clip.truth.to_json()))
        assert members[f"{key}.txt"].decode() == clip.truth.caption
        assert (f"{key}.mp4" in members) == (index == 0)

    loader = ShardLoader(str(curtain_split / "manifest.json"), batch_size=6, max_length=cfg.text.max_length,
                         shuffle_buffer=0)
    (batch,) = list(loader)
    for row, key in enumerate(batch.keys):
        stored = decode_sample({"__key__": key, **{name.split(".", 1)[1]: data for name, data in members.items()
                                                   if name.split(".", 1)[0] == key}})
        assert torch.equal(batch.latents[row], stored.latents)
        length = stored.text.shape[0]
        assert batch.text_lengths[row] == length
        assert torch.equal(batch.text[row, :length], stored.text.float())
        assert not batch.text[row, length:].any()
        assert {k: v for k, v in batch.meta[row].items() if k != "window_start"} == stored.meta


@pytest.mark.parametrize("latent_dtype", ["float32", "bfloat16", "float16"])
def test_encode_decode_keeps_bits_in_every_storage_dtype(latent_dtype):
    latents = torch.randn(4, 3, 2, 2)
    text = torch.randn(5, 8)
    meta = {"caption": "ünïcode caption", "fps": 16.0, "nested": {"list": [1, None, 2.5]}}
    raw = encode_sample("some/dir/key-1", latents, text, meta, latent_dtype=latent_dtype, text_dtype="float32")
    decoded = decode_sample(raw)
    assert decoded.latents.dtype == getattr(torch, latent_dtype)
    assert torch.equal(decoded.latents, latents.to(getattr(torch, latent_dtype)))
    assert torch.equal(decoded.text, text)
    assert decoded.meta == {**meta, "format": "ctxf-sample/1", "key": "some/dir/key-1", "num_frames": 3}


def test_keys_with_dots_are_refused():
    with pytest.raises(ValueError, match="no dot"):
        encode_sample("clip.01", torch.zeros(1, 1, 1, 1), torch.zeros(1, 1), {})


def test_manifest_records_counts_and_checksums_and_the_check_catches_damage(curtain_split, capsys):
    manifest = json.loads((curtain_split / "manifest.json").read_text())
    assert [s["num_samples"] for s in manifest["shards"]] == [4, 2]
    assert manifest["num_samples"] == 6 and manifest["settings"]["seed"] == 7
    for entry in manifest["shards"]:
        data = (curtain_split / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["num_bytes"] == len(data)
    assert manifest_cli.main([str(curtain_split / "manifest.json")]) == 0

    damaged = curtain_split.parent / "damaged"
    damaged.mkdir()
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    for entry in manifest["shards"]:
        data = bytearray((curtain_split / entry["name"]).read_bytes())
        data[5000] ^= 0xFF
        (damaged / entry["name"]).write_bytes(bytes(data))
    (damaged / manifest["shards"][1]["name"]).unlink()
    assert manifest_cli.main([str(damaged / "manifest.json")]) == 1
    output = capsys.readouterr().out
    assert "sha256 differs" in output and "missing" in output


def test_a_failed_run_leaves_only_complete_shards(tmp_path):
    with pytest.raises(RuntimeError, match="decoder crashed"):
        with AtomicShardWriter(tmp_path, max_bytes=1e12, max_samples=2) as writer:
            for index in range(5):
                if index == 3:
                    raise RuntimeError("decoder crashed")
                writer.write(encode_sample(f"k{index}", torch.zeros(1, 1, 1, 1), torch.zeros(1, 2), {}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]
    assert sorted(tar_members(tmp_path / "shard-000000.tar")) == [
        "k0.json", "k0.latents.safetensors", "k0.text.safetensors",
        "k1.json", "k1.latents.safetensors", "k1.text.safetensors"]
