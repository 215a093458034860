"""Text conditioning: prompts -> `[B, max_length, text_dim]` embeddings, zero past the valid tokens.

- `HashingTextEncoder`: no weights; each word maps to a fixed random vector seeded by a stable
  hash of the word. Used by the tiny default and the synthetic world, where captions come from a
  template and only need to be distinct and deterministic.
- `UMT5TextEncoder`: transformers' `UMT5EncoderModel` + tokenizer from a local directory (Wan
  uses umT5-xxl, 512 tokens, 4096 wide).
- `PrecomputedTextEncoder`: embeddings saved beforehand (`.safetensors` or `.npy`).

Like Wan, padded positions are zeros, so a stored embedding can keep only its valid tokens
(`pad_text_embeddings` restores the fixed length).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from ctxf.config import TextConfig
from ctxf.tensor_files import load_tensor


class TextEncoder(ABC):
    max_length: int
    dim: int

    @abstractmethod
    def encode_valid(self, prompts: list[str]) -> list[torch.Tensor]:
        """One `[num_valid_tokens, dim]` tensor per prompt."""

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """`[B, max_length, dim]`, zeros past each prompt's valid tokens."""
        return pad_text_embeddings(self.encode_valid(prompts), self.max_length)


def pad_text_embeddings(embeddings: list[torch.Tensor], max_length: int) -> torch.Tensor:
    dim = embeddings[0].shape[-1]
    out = torch.zeros(len(embeddings), max_length, dim, dtype=torch.float32)
    for i, emb in enumerate(embeddings):
        length = min(emb.shape[0], max_length)
        out[i, :length] = emb[:length].float()
    return out


class HashingTextEncoder(TextEncoder):
    def __init__(self, dim: int, max_length: int, seed: int = 0):
        self.dim, self.max_length, self.seed = dim, max_length, seed

    def _word_vector(self, word: str) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}:{word}".encode()).digest()
        generator = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return torch.from_numpy(generator.standard_normal(self.dim).astype(np.float32))

    def encode_valid(self, prompts: list[str]) -> list[torch.Tensor]:
        out = []
        for prompt in prompts:
            words = prompt.lower().split()[: self.max_length] or ["<empty>"]
            out.append(torch.stack([self._word_vector(w) for w in words]))
        return out


class UMT5TextEncoder(TextEncoder):
    def __init__(self, path: str, max_length: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, UMT5EncoderModel

        if not Path(path).is_dir():
            raise FileNotFoundError(f"text.encoder_path={path!r} is not a directory holding a tokenizer and a "
                                    f"UMT5EncoderModel (e.g. <Wan2.1-T2V-1.3B-Diffusers> with tokenizer/ and "
                                    f"text_encoder/ inside, or one directory with both)")
        root = Path(path)
        tokenizer_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        encoder_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.model = UMT5EncoderModel.from_pretrained(str(encoder_dir), torch_dtype=dtype).to(device).eval()
        self.max_length = max_length
        self.dim = self.model.config.d_model
        self.device = device

    @torch.no_grad()
    def encode_valid(self, prompts: list[str]) -> list[torch.Tensor]:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        hidden = self.model(tokens.input_ids.to(self.device), mask).last_hidden_state.float().cpu()
        lengths = mask.sum(dim=1).tolist()
        return [hidden[i, :length] for i, length in enumerate(lengths)]


class PrecomputedTextEncoder(TextEncoder):
    """Embeddings from a file (`text_embeddings`, `[L, D]` or `[N, L, D]`); prompts are ignored (one per row)."""

    def __init__(self, path: str, max_length: int):
        array = load_tensor(path, "text_embeddings", what="text.embeddings_path")
        self.rows = array.float() if array.ndim == 3 else array.float()[None]
        self.max_length, self.dim = max_length, self.rows.shape[-1]

    def encode_valid(self, prompts: list[str]) -> list[torch.Tensor]:
        return [self.rows[i % len(self.rows)] for i in range(len(prompts))]


def empty_caption(cfg: TextConfig, text_dim: int) -> torch.Tensor:
    """The empty prompt's embedding `[1, max_length, text_dim]`: the unconditional branch of classifier-free
    guidance. The encoder is built for it and dropped (for umT5, loaded once and freed)."""
    return build_text_encoder(cfg, text_dim).encode([""])


def build_text_encoder(cfg: TextConfig, text_dim: int, device: torch.device | str = "cpu") -> TextEncoder:
    if cfg.kind == "hashing":
        encoder: TextEncoder = HashingTextEncoder(text_dim, cfg.max_length, cfg.seed)
    elif cfg.kind == "umt5":
        if not cfg.encoder_path:
            raise ValueError("text.kind=umt5 needs text.encoder_path (a local directory)")
        encoder = UMT5TextEncoder(cfg.encoder_path, cfg.max_length, device=device)
    elif cfg.kind == "embeddings":
        if not cfg.embeddings_path:
            raise ValueError("text.kind=embeddings needs text.embeddings_path (.npy or .safetensors)")
        encoder = PrecomputedTextEncoder(cfg.embeddings_path, cfg.max_length)
    else:
        raise ValueError(f"text.kind={cfg.kind!r}: choose hashing, umt5 or embeddings")
    if encoder.dim != text_dim:
        raise ValueError(f"the text encoder gives {encoder.dim}-wide embeddings but model.text_dim={text_dim}; "
                         f"set model.text_dim={encoder.dim}")
    return encoder
