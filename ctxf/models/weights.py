"""Model weights in and out: diffusers `WanTransformer3DModel` directories and Wan's original
`WanModel` checkpoints.

    read_checkpoint(path)                   tensors as stored, their format, config.json if any
    load_model_weights(model, path)         convert and load strictly into a built `WanDiT`
    build_model_from_pretrained(path)       config from the checkpoint, then the above
    save_diffusers_dir(model, dir)          readable by `WanTransformer3DModel.from_pretrained`
    save_wan_original(model, path)          Wan's own names (.safetensors, .pth or a directory)

A conversion CLI is `save_*(build_model_from_pretrained(src), dst)`.

`WanDiT` uses diffusers' parameter names, so a diffusers checkpoint loads as it is; Wan's
original names go through one declarative table, `WAN_KEY_MAP`, in both directions. diffusers
ships a one-way converter (`convert_wan_transformer_to_diffusers` in
`diffusers.loaders.single_file_utils`). We keep our own table rather than call it because the
export needs the inverse, and because its substring renames also accept image-to-video, VACE
and Animate keys that this model must reject; the tests use diffusers' converter as the oracle
for the table.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file

from ctxf.config import ConfigError, ModelConfig
from ctxf.models.wan import WanDiT

StateDict = dict[str, torch.Tensor]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' name; Wan's own releases use it too
WEIGHTS_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
INDEX_SUFFIX = ".safetensors.index.json"
CONFIG_NAME = "config.json"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Wrappers that prefix every key: ComfyUI / single-file, Self-Forcing's `model.`, DDP, torch.compile.
WRAPPER_PREFIXES = ("model.diffusion_model.", "model.", "module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


# ----------------------------------------------------------------------------- key map

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


def _wan_name(key: str) -> str:
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


# ----------------------------------------------------------------------------- reading

@dataclass
class Checkpoint:
    source: str
    format: str  # "wan" | "diffusers"
    state_dict: StateDict  # keys as stored, wrapper prefixes stripped
    config: dict | None  # config.json beside the weights, if any

    def diffusers_state_dict(self) -> StateDict:
        return self.state_dict if self.format == "diffusers" else wan_to_diffusers(self.state_dict)


def read_checkpoint(path: str | Path, state_dict_key: str | None = None) -> Checkpoint:
    """Read a Wan transformer checkpoint in any supported layout:

    - a directory written by `save_pretrained` (one `diffusion_pytorch_model.safetensors`, or shards
      with `diffusion_pytorch_model.safetensors.index.json`), or a pipeline directory holding one in
      `transformer/`; Wan's own releases use the same file names with original keys;
    - a directory of safetensors shards without an index;
    - one `.safetensors`, `.pth`, `.pt`, `.bin` or `.ckpt` file (torch files load with weights_only).

    `state_dict_key` picks the weights inside a torch file that holds several entries (for example
    `generator_ema` in a Self-Forcing checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    config = None
    if path.is_dir():
        directory = _weights_directory(path)
        state_dict = {}
        for file in _weight_files(directory):
            state_dict.update(_read_file(file, state_dict_key))
        config_path = directory / CONFIG_NAME
        if config_path.is_file():
            config = json.loads(config_path.read_text())
    else:
        state_dict = _read_file(path, state_dict_key)
    state_dict = _strip_wrapper_prefixes(state_dict)
    return Checkpoint(str(path), detect_format(state_dict, str(path)), state_dict, config)


def load_diffusers_dir(path: str | Path) -> StateDict:
    """The state dict of a diffusers `WanTransformer3DModel` directory (or its pipeline directory)."""
    checkpoint = read_checkpoint(path)
    if not Path(path).is_dir() or checkpoint.format != "diffusers":
        raise CheckpointError(f"{path} is not a diffusers WanTransformer3DModel directory "
                              f"(found a {checkpoint.format}-format checkpoint); use load_wan_original or "
                              f"read_checkpoint")
    return checkpoint.state_dict


def load_wan_original(path: str | Path, state_dict_key: str | None = None) -> StateDict:
    """A Wan original-format state dict (keys as in `WanModel`) from a file or a directory of shards."""
    checkpoint = read_checkpoint(path, state_dict_key)
    if checkpoint.format != "wan":
        raise CheckpointError(f"{path} holds diffusers names, not Wan original ones; use load_diffusers_dir")
    return checkpoint.state_dict


def _weights_directory(path: Path) -> Path:
    if not _has_weights(path) and _has_weights(path / "transformer"):
        return path / "transformer"
    return path


def _has_weights(directory: Path) -> bool:
    return directory.is_dir() and any(f.suffix == ".safetensors" or f.suffix in TORCH_SUFFIXES
                                      for f in directory.iterdir())


def _weight_files(directory: Path) -> list[Path]:
    indexes = sorted(directory.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) > 1:
        raise CheckpointError(f"{directory} holds several shard indexes ({', '.join(i.name for i in indexes)}); "
                              f"keep one checkpoint per directory")
    if indexes:
        names = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{indexes[0]} lists shards that are not there: {', '.join(missing)}")
        return [directory / n for n in names]
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    shards = sorted(directory.glob("*.safetensors"))
    if shards:
        return shards
    torch_files = sorted(f for f in directory.iterdir() if f.suffix in TORCH_SUFFIXES)
    if len(torch_files) == 1:
        return torch_files
    contents = ", ".join(sorted(f.name for f in directory.iterdir())) or "nothing"
    raise CheckpointError(f"{directory} holds no weights this loader knows (contents: {contents}); expected "
                          f"{WEIGHTS_NAME}, shards with *{INDEX_SUFFIX}, *.safetensors, or one torch file")


def _read_file(path: Path, state_dict_key: str | None) -> StateDict:
    if path.suffix == ".safetensors":
        return load_file(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights file type {path.suffix!r}; give .safetensors, "
                              f"{', '.join(TORCH_SUFFIXES)} or a directory")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} holds objects other than tensors and plain containers, which are not "
                              f"loaded for safety; re-save its state dict alone ({err})") from err
    return _unwrap(loaded, state_dict_key, path)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, state_dict_key: str | None, path: Path) -> StateDict:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if state_dict_key is not None:
        if state_dict_key not in obj:
            raise CheckpointError(f"{path} has no entry {state_dict_key!r}; entries: {', '.join(map(str, obj))}")
        obj = obj[state_dict_key]
        if not _is_state_dict(obj):
            raise CheckpointError(f"{path}[{state_dict_key!r}] is not a dict of tensors")
        return obj
    if _is_state_dict(obj):
        return obj
    candidates = [k for k, v in obj.items() if _is_state_dict(v)]
    if len(candidates) == 1:
        return obj[candidates[0]]
    raise CheckpointError(f"{path} holds several entries ({', '.join(map(str, obj))}); choose the weights with "
                          f"state_dict_key=<one of: {', '.join(map(str, candidates)) or 'none holds tensors'}>")


def _strip_wrapper_prefixes(state_dict: StateDict) -> StateDict:
    stripped = True
    while stripped and state_dict:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped = True
    return state_dict


# ----------------------------------------------------------------------------- configs

# (diffusers config.json field, ModelConfig field)
DIFFUSERS_CONFIG_FIELDS: tuple[tuple[str, str], ...] = (
    ("num_attention_heads", "num_heads"),
    ("attention_head_dim", "head_dim"),
    ("num_layers", "num_layers"),
    ("ffn_dim", "ffn_dim"),
    ("freq_dim", "freq_dim"),
    ("text_dim", "text_dim"),
    ("in_channels", "in_channels"),
    ("out_channels", "out_channels"),
    ("patch_size", "patch_size"),
    ("eps", "eps"),
    ("cross_attn_norm", "cross_attn_norm"),
    ("rope_max_seq_len", "rope_max_positions"),
)
# diffusers options WanDiT does not implement (image conditioning, other qk norms), at the value it does
DIFFUSERS_FIXED_FIELDS: dict[str, Any] = {
    "qk_norm": "rms_norm_across_heads", "image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None}
# (WanModel config.json field, ModelConfig field); WanModel never writes patch_size, text_dim or
# cross_attn_norm (its `ignore_for_config`), so those come from the weights when absent.
WAN_CONFIG_FIELDS: tuple[tuple[str, str], ...] = (
    ("num_heads", "num_heads"),
    ("num_layers", "num_layers"),
    ("ffn_dim", "ffn_dim"),
    ("freq_dim", "freq_dim"),
    ("text_dim", "text_dim"),
    ("in_dim", "in_channels"),
    ("out_dim", "out_channels"),
    ("patch_size", "patch_size"),
    ("eps", "eps"),
    ("cross_attn_norm", "cross_attn_norm"),
)
# Both diffusers and the original Wan fix RoPE's base; read it from diffusers rather than restate it.
WAN_ROPE_THETA: float = inspect.signature(WanRotaryPosEmbed.__init__).parameters["theta"].default


def _diffusers_defaults() -> dict[str, Any]:
    params = inspect.signature(WanTransformer3DModel.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def _normalize(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _diffusers_fields(config: dict) -> dict[str, Any]:
    full = {**_diffusers_defaults(), **config}
    unsupported = {k: full[k] for k, v in DIFFUSERS_FIXED_FIELDS.items() if full.get(k) != v}
    if unsupported:
        raise CheckpointError(f"diffusers config with {unsupported} is not supported: ctxf's WanDiT is the "
                              f"text-to-video Wan ({DIFFUSERS_FIXED_FIELDS})")
    fields = {ours: _normalize(full[theirs]) for theirs, ours in DIFFUSERS_CONFIG_FIELDS}
    fields["out_channels"] = fields["out_channels"] or fields["in_channels"]
    fields["rope_theta"] = WAN_ROPE_THETA
    return fields


def _wan_fields(config: dict) -> dict[str, Any]:
    if config.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"WanModel config with model_type={config['model_type']!r} is not supported: "
                              f"ctxf's WanDiT is the text-to-video Wan (model_type t2v)")
    fields = {ours: _normalize(config[theirs]) for theirs, ours in WAN_CONFIG_FIELDS if theirs in config}
    if "dim" in config and "num_heads" in config:
        fields["head_dim"] = config["dim"] // config["num_heads"]
    fields["rope_theta"] = WAN_ROPE_THETA
    return fields


def config_fields(config: dict) -> dict[str, Any]:
    """The ModelConfig fields a checkpoint's config.json fixes (diffusers or WanModel form)."""
    kind = config.get("_class_name")
    if kind == "WanTransformer3DModel" or (kind is None and "num_attention_heads" in config):
        return _diffusers_fields(config)
    if kind == "WanModel" or (kind is None and "dim" in config):
        return _wan_fields(config)
    raise CheckpointError(f"config.json describes {kind!r}, not a Wan transformer "
                          f"(WanTransformer3DModel or WanModel)")


def model_config_from_diffusers(config: dict, base: ModelConfig | None = None) -> ModelConfig:
    """A ModelConfig for a diffusers `WanTransformer3DModel` config (fields it omits take diffusers'
    defaults); `base` supplies what diffusers does not describe (attention backend, dtype)."""
    return dataclasses.replace(base or ModelConfig(), **_diffusers_fields(config))


def diffusers_config(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json `WanTransformer3DModel.from_pretrained` needs to rebuild this model."""
    if cfg.rope_theta != WAN_ROPE_THETA:
        raise CheckpointError(f"model.rope_theta={cfg.rope_theta}: diffusers' WanTransformer3DModel fixes RoPE "
                              f"theta at {WAN_ROPE_THETA}, so it would run this model wrongly")
    config = {"_class_name": WanTransformer3DModel.__name__, "_diffusers_version": diffusers.__version__}
    config.update({theirs: getattr(cfg, ours) for theirs, ours in DIFFUSERS_CONFIG_FIELDS})
    config.update(DIFFUSERS_FIXED_FIELDS)
    return config


def wan_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json in the form Wan's `WanModel` writes (it ignores patch_size, text_dim and
    cross_attn_norm when loading; they are kept for readers that do not assume Wan's defaults)."""
    config: dict[str, Any] = {"_class_name": "WanModel", "model_type": "t2v", "dim": cfg.dim}
    config.update({theirs: getattr(cfg, ours) for theirs, ours in WAN_CONFIG_FIELDS})
    return config


def check_model_config(cfg: ModelConfig, config: dict, source: str = "checkpoint") -> None:
    """Raise ConfigError listing every field where `cfg` disagrees with a checkpoint's config.json."""
    wrong = [(name, getattr(cfg, name), value) for name, value in config_fields(config).items()
             if _normalize(getattr(cfg, name)) != value]
    if wrong:
        lines = "\n".join(f"  model.{name}={ours!r} but the checkpoint has {theirs!r}: set model.{name}={theirs!r}"
                          for name, ours, theirs in wrong)
        raise ConfigError(f"the model config does not match {source}/{CONFIG_NAME}:\n{lines}")


def _weights_fields(state_dict: StateDict) -> dict[str, Any]:
    """Geometry read off tensor shapes (diffusers names); absent keys give no field. `dim` is the
    model width, which the head count splits: weights cannot tell num_heads from head_dim."""
    fields: dict[str, Any] = {}
    patch = state_dict.get("patch_embedding.weight")  # [dim, in_channels, pt, ph, pw]
    if patch is not None:
        fields.update(dim=patch.shape[0], in_channels=patch.shape[1], patch_size=list(patch.shape[2:]))
        proj = state_dict.get("proj_out.weight")  # [out_channels * pt * ph * pw, dim]
        if proj is not None:
            fields["out_channels"] = proj.shape[0] // patch.shape[2:].numel()
    for key, name in (("condition_embedder.text_embedder.linear_1.weight", "text_dim"),
                      ("condition_embedder.time_embedder.linear_1.weight", "freq_dim")):
        if key in state_dict:
            fields[name] = state_dict[key].shape[1]
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    if blocks:
        fields["num_layers"] = blocks[-1] + 1
        fields["cross_attn_norm"] = f"blocks.{blocks[0]}.norm2.weight" in state_dict
        ffn = state_dict.get(f"blocks.{blocks[0]}.ffn.net.0.proj.weight")
        if ffn is not None:
            fields["ffn_dim"] = ffn.shape[0]
    return fields


def model_config_for_checkpoint(checkpoint: Checkpoint, base: ModelConfig | None = None) -> ModelConfig:
    """The ModelConfig a checkpoint needs: from its config.json where it has one, the rest read off
    its tensors; the head split comes from config.json or else from `base.head_dim`."""
    base = base or ModelConfig()
    fields = _weights_fields(checkpoint.diffusers_state_dict())
    dim = fields.pop("dim", None)
    if checkpoint.config is not None:
        fields.update(config_fields(checkpoint.config))
    if "head_dim" not in fields:
        if dim is None:
            raise CheckpointError(f"{checkpoint.source} has no patch_embedding.weight to read the model width from")
        fields["head_dim"] = dim // fields["num_heads"] if "num_heads" in fields else base.head_dim
    fields.setdefault("num_heads", (dim or 0) // fields["head_dim"])
    if dim is not None and fields["num_heads"] * fields["head_dim"] != dim:
        where = CONFIG_NAME if checkpoint.config is not None else f"model.head_dim={base.head_dim}"
        raise CheckpointError(f"{checkpoint.source}: the weights are {dim} wide, which {fields['num_heads']} heads x "
                              f"{fields['head_dim']} (from {where}) does not make; set model.head_dim so that it "
                              f"divides {dim} (Wan2.1: 128)")
    return dataclasses.replace(base, **fields)


# ----------------------------------------------------------------------------- loading

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
    if checkpoint.config is not None:
        check_model_config(model.cfg, checkpoint.config, checkpoint.source)
    state_dict = checkpoint.diffusers_state_dict()
    problems = _mismatches(model, state_dict, checkpoint.format)
    if problems:
        hints = _diagnose(model.cfg, state_dict)
        raise CheckpointError(f"{checkpoint.source} ({checkpoint.format} format) does not fit the model:\n"
                              + "\n".join(problems) + ("\nLikely cause:\n" + "\n".join(hints) if hints else ""))
    model.load_state_dict(state_dict, strict=True)


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
    named = _wan_name if fmt == "wan" else str  # the checkpoint's own name for one of our keys
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
    fields = _weights_fields(state_dict)
    dim = fields.pop("dim", None)
    known = KNOWN_MODELS.get((dim, fields.get("num_layers")))
    if known:
        hints.append(f"  looks like a {known} checkpoint: {fields['num_layers']} blocks of width {dim}")
    if dim is not None and dim != cfg.dim:
        hints.append(f"  the checkpoint is {dim} wide but model.num_heads x model.head_dim = {cfg.num_heads} x "
                     f"{cfg.head_dim} = {cfg.dim}: set them so their product is {dim}")
    for name, value in fields.items():
        if _normalize(getattr(cfg, name)) != value:
            hints.append(f"  the checkpoint has {name}={value!r} but model.{name}={getattr(cfg, name)!r}: "
                         f"set model.{name}={value!r}")
    return hints


# ----------------------------------------------------------------------------- saving

def save_diffusers_dir(model: WanDiT, directory: str | Path, max_shard_size: int | str | None = None) -> Path:
    """Write config.json and safetensors (sharded with an index above `max_shard_size`, e.g. "5GB")
    that `WanTransformer3DModel.from_pretrained(directory)` loads."""
    directory = Path(directory)
    config = diffusers_config(model.cfg)
    _write_safetensors_dir(_cpu_state_dict(model), directory, max_shard_size)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def save_wan_original(model: WanDiT, path: str | Path, max_shard_size: int | str | None = None) -> Path:
    """Write the weights under Wan's original names: one `.safetensors` or `.pth`/`.pt` file, or
    (any other path) a directory laid out like Wan's releases (config.json + safetensors)."""
    path = Path(path)
    state_dict = diffusers_to_wan(_cpu_state_dict(model))
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state_dict, path, metadata={"format": "pt"})
    elif path.suffix in (".pth", ".pt"):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state_dict, path)
    else:
        _write_safetensors_dir(state_dict, path, max_shard_size)
        (path / CONFIG_NAME).write_text(json.dumps(wan_config(model.cfg), indent=2, sort_keys=True) + "\n")
    return path


def _cpu_state_dict(model: torch.nn.Module) -> StateDict:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _write_safetensors_dir(state_dict: StateDict, directory: Path, max_shard_size: int | str | None) -> None:
    """`diffusion_pytorch_model.safetensors`, or shards plus an index; earlier weight files of these
    names in `directory` are removed first so a reader never mixes two saves."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("diffusion_pytorch_model*.safetensors*"):
        stale.unlink()
    if max_shard_size is None:
        save_file(state_dict, directory / WEIGHTS_NAME, metadata={"format": "pt"})
        return
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern=WEIGHTS_PATTERN,
                                               max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state_dict[k] for k in keys}, directory / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
