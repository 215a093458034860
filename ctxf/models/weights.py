"""Loading checkpoint weights into a `WanDiT`, strictly, with a diagnosis when they do not fit.

    load_model_weights(model, path)         convert and load strictly into a built `WanDiT`
    build_model_from_pretrained(path)       config from the checkpoint, then the above

Reading, writing and renaming checkpoints is `ctxf.ckpt` (`checkpoint_files`, `wan_keys`,
`checkpoint_config`); a conversion is `save_*(build_model_from_pretrained(src), dst)` with
`save_diffusers_dir` or `save_wan_original` from `ctxf.ckpt.checkpoint_files`.

A checkpoint that does not fit raises CheckpointError naming the missing, unexpected and wrongly
shaped keys (folded into block ranges, and under the checkpoint's own names for Wan original
checkpoints) and the likely cause: another Wan variant, a known Wan2.1 size, or the ModelConfig
fields to change.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ctxf.ckpt.checkpoint_config import check_model_config, model_config_for_checkpoint, normalize_field, weights_fields
from ctxf.ckpt.checkpoint_files import Checkpoint, read_checkpoint
from ctxf.ckpt.wan_keys import CheckpointError, StateDict, wan_name
from ctxf.config import ModelConfig
from ctxf.models.wan import WanDiT

# Key fragments of other Wan variants, with the model they come from.
FOREIGN_VARIANTS: tuple[tuple[str, str], ...] = (
    ("img_emb.", "Wan's image-to-video model (CLIP image embedding)"),
    ("image_embedder.", "Wan's image-to-video model (CLIP image embedding)"),
    (".k_img.", "Wan's image-to-video model (image cross-attention)"),
    (".add_k_proj.", "Wan's image-to-video model (image cross-attention)"),
    ("vace_", "Wan-VACE (control blocks)"),
    ("motion_encoder.", "Wan-Animate"),
    ("face_adapter.", "Wan-Animate"),
)
# (width, blocks) of released Wan2.1 text-to-video models, to name what a mismatched checkpoint is.
KNOWN_MODELS: dict[tuple[int, int], str] = {
    (1536, 30): "Wan2.1-T2V-1.3B (12 heads x 128, ffn 8960)",
    (5120, 40): "Wan2.1-T2V-14B (40 heads x 128, ffn 13824)",
}
MAX_LISTED = 12
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def load_model_weights(model: WanDiT, path: str | Path | Checkpoint, state_dict_key: str | None = None) -> None:
    """Load a checkpoint (any layout `read_checkpoint` takes, or a read `Checkpoint`) into `model`
    strictly. Raises ConfigError when its config.json disagrees with `model.cfg`, and
    CheckpointError listing missing, unexpected and wrongly shaped keys with the likely cause."""
    checkpoint = path if isinstance(path, Checkpoint) else read_checkpoint(path, state_dict_key)
    model.load_state_dict(_fitting_state_dict(model, checkpoint), strict=True)


def check_weights_fit(cfg: ModelConfig, path: str | Path | Checkpoint, state_dict_key: str | None = None) -> None:
    """Raise as `load_model_weights` would, without building real parameters (a meta-device model),
    so a job can refuse a checkpoint of another geometry before it starts."""
    with torch.device("meta"):
        model = WanDiT(cfg)
    checkpoint = path if isinstance(path, Checkpoint) else read_checkpoint(path, state_dict_key)
    _fitting_state_dict(model, checkpoint)


def _fitting_state_dict(model: WanDiT, checkpoint: Checkpoint) -> StateDict:
    if checkpoint.config is not None:
        check_model_config(model.cfg, checkpoint.config, checkpoint.source)
    state_dict = checkpoint.diffusers_state_dict()
    problems = _mismatches(model, state_dict, checkpoint.format)
    if problems:
        hints = _diagnose(model.cfg, state_dict)
        raise CheckpointError(f"{checkpoint.source} ({checkpoint.format} format) does not fit the model:\n"
                              + "\n".join(problems) + ("\nLikely cause:\n" + "\n".join(hints) if hints else ""))
    return state_dict


def build_model_from_pretrained(path: str | Path, base: ModelConfig | None = None,
                                state_dict_key: str | None = None) -> WanDiT:
    """A WanDiT shaped by the checkpoint (see `model_config_for_checkpoint`) with its weights loaded.
    `base` supplies what a checkpoint does not describe (attention backend, dtype, RoPE range)."""
    checkpoint = read_checkpoint(path, state_dict_key)
    model = WanDiT(model_config_for_checkpoint(checkpoint, base))
    load_model_weights(model, checkpoint)
    return model


def _mismatches(model: torch.nn.Module, state_dict: StateDict, fmt: str) -> list[str]:
    """Lines naming missing, unexpected and wrongly shaped keys; empty when the checkpoint fits."""
    expected = model.state_dict()
    named = wan_name if fmt == "wan" else str  # the checkpoint's own name for one of our keys
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(named(k) for k in set(state_dict) - set(expected))
    wrong_shape = [k for k in sorted(set(state_dict) & set(expected)) if state_dict[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems += [f"  missing {len(missing)} keys (model names):", _summarize(missing, set(expected))]
    if unexpected:
        problems += [f"  unexpected {len(unexpected)} keys (checkpoint names):",
                     _summarize(unexpected, {named(k) for k in state_dict})]
    if wrong_shape:
        problems += [f"  {len(wrong_shape)} keys with the wrong shape:", _truncated([
            f"{k}{f' (Wan: {named(k)})' if named(k) != k else ''}: checkpoint {list(state_dict[k].shape)}, "
            f"model {list(expected[k].shape)}" for k in wrong_shape])]
    return problems


def _summarize(keys: list[str], side_keys: set[str]) -> str:
    """One line per key pattern: blocks whose every key (of `side_keys`) is listed fold to
    `blocks.{30-39}.*`, other block indices fold into `blocks.{0,2}.attn1.to_q.weight`."""
    listed = set(keys)
    per_block: dict[int, set[str]] = {}
    for key in side_keys:
        if match := _BLOCK_KEY.match(key):
            per_block.setdefault(int(match.group(1)), set()).add(key)
    whole = sorted(index for index, block_keys in per_block.items() if block_keys <= listed)
    groups: dict[str, list[int]] = {}
    for key in keys:
        match = _BLOCK_KEY.match(key)
        if match is None:
            groups.setdefault(key, [])
        elif int(match.group(1)) not in whole:
            groups.setdefault(f"blocks.{{}}.{match.group(2)}", []).append(int(match.group(1)))
    lines = [f"blocks.{_ranges(whole)}.* (whole blocks)"] if whole else []
    lines += [pattern.format(_ranges(indices)) if indices else pattern for pattern, indices in sorted(groups.items())]
    return _truncated(lines)


def _truncated(lines: list[str]) -> str:
    more = len(lines) - MAX_LISTED
    return "\n".join(f"    {line}" for line in lines[:MAX_LISTED]) + (f"\n    ... and {more} more" if more > 0 else "")


def _ranges(indices: list[int]) -> str:
    spans: list[list[int]] = []
    for index in sorted(indices):
        if spans and spans[-1][1] == index - 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return text if len(indices) == 1 else "{" + text + "}"


def _diagnose(cfg: ModelConfig, state_dict: StateDict) -> list[str]:
    hints = []
    for fragment, variant in FOREIGN_VARIANTS:
        if any(fragment in key for key in state_dict):
            hints.append(f"  keys with '{fragment}' come from {variant}; ctxf loads text-to-video Wan only")
            break
    fields = weights_fields(state_dict)
    dim = fields.pop("dim", None)
    known = KNOWN_MODELS.get((dim, fields.get("num_layers")))
    if known:
        hints.append(f"  looks like a {known} checkpoint: {fields['num_layers']} blocks of width {dim}")
    if dim is not None and dim != cfg.dim:
        hints.append(f"  the checkpoint is {dim} wide but model.num_heads x model.head_dim = {cfg.num_heads} x "
                     f"{cfg.head_dim} = {cfg.dim}: set them so their product is {dim}")
    for name, value in fields.items():
        if normalize_field(getattr(cfg, name)) != value:
            hints.append(f"  the checkpoint has {name}={value!r} but model.{name}={getattr(cfg, name)!r}: "
                         f"set model.{name}={value!r}")
    return hints
