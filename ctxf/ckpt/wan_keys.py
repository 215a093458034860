"""Wan's original `WanModel` parameter names <-> WanDiT / diffusers names, as one declarative table.

    WAN_KEY_MAP                 (Wan module, WanDiT / diffusers module) pairs
    wan_to_diffusers(sd)        rename a Wan original state dict to our names
    diffusers_to_wan(sd)        the inverse, for exporting
    wan_name(key)               the Wan name of one of our keys (for messages)
    detect_format(sd)           "wan" or "diffusers", from which side of the table the keys use

`WanDiT` uses diffusers' parameter names, so a diffusers checkpoint loads as it is; Wan's
original names go through `WAN_KEY_MAP`, in both directions. diffusers ships a one-way converter
(`convert_wan_transformer_to_diffusers` in `diffusers.loaders.single_file_utils`). We keep our own
table rather than call it because the export needs the inverse, and because its substring
renames also accept image-to-video, VACE and Animate keys that this model must reject; the tests
use diffusers' converter as the oracle for the table.

`CheckpointError` lives here, the bottom of `ctxf.ckpt`, because renaming is the first thing
that can reject a checkpoint and every other checkpoint module builds on this one.
"""

from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


# (original WanModel module, WanDiT / diffusers module). `{n}` is a block index; the parameter
# name after the module (`.weight`, `.bias`, or none for the bare modulation tables) carries over.
WAN_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("blocks.{n}.self_attn.q", "blocks.{n}.attn1.to_q"),
    ("blocks.{n}.self_attn.k", "blocks.{n}.attn1.to_k"),
    ("blocks.{n}.self_attn.v", "blocks.{n}.attn1.to_v"),
    ("blocks.{n}.self_attn.o", "blocks.{n}.attn1.to_out.0"),
    ("blocks.{n}.self_attn.norm_q", "blocks.{n}.attn1.norm_q"),
    ("blocks.{n}.self_attn.norm_k", "blocks.{n}.attn1.norm_k"),
    ("blocks.{n}.cross_attn.q", "blocks.{n}.attn2.to_q"),
    ("blocks.{n}.cross_attn.k", "blocks.{n}.attn2.to_k"),
    ("blocks.{n}.cross_attn.v", "blocks.{n}.attn2.to_v"),
    ("blocks.{n}.cross_attn.o", "blocks.{n}.attn2.to_out.0"),
    ("blocks.{n}.cross_attn.norm_q", "blocks.{n}.attn2.norm_q"),
    ("blocks.{n}.cross_attn.norm_k", "blocks.{n}.attn2.norm_k"),
    # Wan runs norm1, norm3 (cross-attention, the only affine one), norm2; diffusers numbers them in order
    ("blocks.{n}.norm3", "blocks.{n}.norm2"),
    ("blocks.{n}.ffn.0", "blocks.{n}.ffn.net.0.proj"),
    ("blocks.{n}.ffn.2", "blocks.{n}.ffn.net.2"),
    ("blocks.{n}.modulation", "blocks.{n}.scale_shift_table"),
    ("head.head", "proj_out"),
    ("head.modulation", "scale_shift_table"),
)


def _compile(module: str) -> re.Pattern:
    body = re.escape(module).replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile(f"^{body}(?P<param>\\.weight|\\.bias)?$")


_TO_OURS = [(_compile(wan), ours) for wan, ours in WAN_KEY_MAP if wan != ours]
_TO_WAN = [(_compile(ours), wan) for wan, ours in WAN_KEY_MAP if wan != ours]


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            groups = match.groupdict()
            return template.replace("{n}", groups.get("n") or "") + (groups["param"] or "")
    return None


def _convert(state_dict: StateDict, rules: list[tuple[re.Pattern, str]]) -> StateDict:
    out: StateDict = {}
    source: dict[str, str] = {}
    for key, tensor in state_dict.items():
        new_key = _rename(key, rules) or key
        if new_key in out:
            raise CheckpointError(f"checkpoint keys {source[new_key]!r} and {key!r} would both be named {new_key!r}; "
                                  f"remove the one that does not belong")
        out[new_key], source[new_key] = tensor, key
    return out


def wan_to_diffusers(state_dict: StateDict) -> StateDict:
    """Wan original names -> WanDiT / diffusers names. Keys outside the table pass through unchanged,
    so strict loading reports them."""
    return _convert(state_dict, _TO_OURS)


def diffusers_to_wan(state_dict: StateDict) -> StateDict:
    """WanDiT / diffusers names -> Wan original names (the inverse of `wan_to_diffusers`)."""
    return _convert(state_dict, _TO_WAN)


def wan_name(key: str) -> str:
    """The Wan original name of a WanDiT / diffusers key (the key itself when the table has no entry)."""
    return _rename(key, _TO_WAN) or key


def detect_format(state_dict: StateDict, source: str = "checkpoint") -> str:
    """"wan" or "diffusers", from which side of `WAN_KEY_MAP` the keys are named by."""
    wan = sum(_rename(k, _TO_OURS) is not None for k in state_dict)
    ours = sum(_rename(k, _TO_WAN) is not None for k in state_dict)
    if wan and not ours:
        return "wan"
    if ours and not wan:
        return "diffusers"
    sample = ", ".join(sorted(state_dict)[:5]) or "no keys"
    if wan and ours:
        raise CheckpointError(f"{source} mixes Wan original names ({wan} keys) and diffusers names ({ours} keys); "
                              f"convert it with one tool. First keys: {sample}")
    raise CheckpointError(f"{source} does not look like a Wan transformer: none of its keys is a Wan original or "
                          f"diffusers name (first keys: {sample}). If every key has a prefix, strip it.")
