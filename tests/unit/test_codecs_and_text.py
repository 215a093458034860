"""Codecs and text encoders, including the real diffusers / transformers classes on tiny weights."""

import pytest
import torch
from diffusers import AutoencoderKLWan

from ctxf.config import CodecConfig, TextConfig
from ctxf.models.codec import PixelCodec, WanVAECodec, build_codec, uint8_to_video, video_to_uint8
from ctxf.models.text_encoder import HashingTextEncoder, UMT5TextEncoder, build_text_encoder


def test_pixel_codec_folds_pixels_losslessly():
    codec = PixelCodec(2)
    video = torch.rand(1, 3, 4, 6, 8) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, 12, 4, 3, 4)
    assert torch.equal(codec.decode(latents), video)
    # one latent pixel holds exactly its 2x2 block of RGB pixels
    assert sorted(latents[0, :, 1, 2, 3].tolist()) == sorted(video[0, :, 1, 4:6, 6:8].flatten().tolist())


def test_pixel_codec_channel_order_is_colour_then_row_then_column():
    """Shards written earlier depend on this order; checked pixel by pixel from the definition."""
    p, codec = 3, PixelCodec(3)
    video = torch.randn(2, 3, 2, 6, 9)
    latents = codec.encode(video)
    for c in range(3):
        for dy in range(p):
            for dx in range(p):
                assert torch.equal(latents[:, c * p * p + dy * p + dx], video[:, c, :, dy::p, dx::p])


def test_uint8_round_trip():
    frames = torch.randint(0, 256, (2, 3, 4, 4, 3), dtype=torch.uint8)
    assert torch.equal(video_to_uint8(uint8_to_video(frames)), frames)


def test_wan_vae_codec_from_a_local_directory(tmp_path):
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True])
    vae.save_pretrained(tmp_path / "vae")
    codec = build_codec(CodecConfig(kind="wan_vae", vae_path=str(tmp_path / "vae")))
    assert isinstance(codec, WanVAECodec) and codec.spatial_stride == 8 and codec.temporal_stride == 4
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, 16, 3, 4, 4)
    # normalisation is the VAE's own: undoing it gives diffusers' raw posterior mode
    raw = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    assert torch.allclose(latents * std + mean, raw, atol=1e-5)
    assert codec.decode(latents).shape == (1, 3, codec.num_video_frames(3), 32, 32)


def test_wan_vae_codec_without_path_says_what_to_set():
    with pytest.raises(ValueError, match="codec.vae_path"):
        build_codec(CodecConfig(kind="wan_vae"))


def test_hashing_encoder_is_deterministic_and_pads_with_zeros():
    encoder = HashingTextEncoder(dim=8, max_length=6, seed=1)
    a = encoder.encode(["a red square", "a blue bar"])
    b = HashingTextEncoder(dim=8, max_length=6, seed=1).encode(["a red square", "a blue bar"])
    assert torch.equal(a, b)
    assert torch.equal(a[0, 0], a[1, 0])  # the same word, the same vector
    assert not torch.equal(a[0, 1], a[1, 1])
    assert a[:, 3:].abs().sum() == 0


def make_umt5_dir(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "square": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path / "tokenizer")
    config = UMT5Config(vocab_size=len(vocab), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    model = UMT5EncoderModel(config).eval()
    model.save_pretrained(path / "text_encoder")
    return model


def test_umt5_encoder_from_a_local_directory(tmp_path):
    reference = make_umt5_dir(tmp_path)
    encoder = build_text_encoder(TextConfig(kind="umt5", encoder_path=str(tmp_path), max_length=8), text_dim=16)
    assert isinstance(encoder, UMT5TextEncoder)
    (valid,) = encoder.encode_valid(["a red square"])
    assert valid.shape == (3, 16)
    with torch.no_grad():
        expected = reference(torch.tensor([[3, 4, 5]])).last_hidden_state[0]
    assert torch.allclose(valid, expected, atol=1e-5)
    padded = encoder.encode(["a red square"])
    assert padded.shape == (1, 8, 16) and padded[0, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="model.text_dim=16"):
        build_text_encoder(TextConfig(kind="umt5", encoder_path=str(tmp_path), max_length=8), text_dim=32)


def test_precomputed_embeddings_from_npy_and_safetensors(tmp_path):
    import numpy as np
    from safetensors.torch import save_file

    rows = torch.randn(2, 3, 8)
    np.save(tmp_path / "emb.npy", rows.numpy())
    save_file({"text_embeddings": rows[0], "other": torch.zeros(1)}, str(tmp_path / "emb.safetensors"))
    from_npy = build_text_encoder(TextConfig(kind="embeddings", embeddings_path=str(tmp_path / "emb.npy"),
                                             max_length=5), text_dim=8)
    out = from_npy.encode(["first", "second", "third"])
    assert out.shape == (3, 5, 8)
    assert torch.equal(out[1, :3], rows[1]) and torch.equal(out[2, :3], rows[0]) and out[:, 3:].abs().sum() == 0
    from_st = build_text_encoder(TextConfig(kind="embeddings", embeddings_path=str(tmp_path / "emb.safetensors"),
                                            max_length=5), text_dim=8)
    assert torch.equal(from_st.encode(["x"])[0, :3], rows[0])
    (tmp_path / "emb.txt").write_text("not a tensor")
    with pytest.raises(ValueError, match="text.embeddings_path .*emb.txt: use a .npy or .safetensors"):
        build_text_encoder(TextConfig(kind="embeddings", embeddings_path=str(tmp_path / "emb.txt"),
                                      max_length=5), text_dim=8)
