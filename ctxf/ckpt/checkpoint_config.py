"""ModelConfig <-> a checkpoint's config.json, in diffusers' `WanTransformer3DModel` form and in
Wan's original `WanModel` form, plus the geometry a checkpoint's tensors fix.

    model_config_from_diffusers(config)     ModelConfig for a diffusers config.json
    diffusers_config(cfg) / wan_config(cfg) the config.json each side writes for a ModelConfig
    config_fields(config)                   the ModelConfig fields a config.json (either form) fixes
    check_model_config(cfg, config)         ConfigError naming every field that disagrees
    weights_fields(state_dict)              geometry read off tensor shapes
    model_config_for_checkpoint(ckpt)       config.json where there is one, tensor shapes for the rest

Only the fields WanDiT implements are mapped: a config asking for image conditioning, another
qk norm or a non-t2v WanModel is rejected rather than silently ignored. RoPE's theta is read from
diffusers, which (like the original Wan) fixes it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import TYPE_CHECKING, Any

import diffusers
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from ctxf.ckpt.wan_keys import CheckpointError, StateDict
from ctxf.config import ConfigError, ModelConfig

if TYPE_CHECKING:  # checkpoint_files imports this module to write config.json
    from ctxf.ckpt.checkpoint_files import Checkpoint

CONFIG_NAME = "config.json"  # beside the weights, in both diffusers' and Wan's layouts

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


def normalize_field(value: Any) -> Any:
    """A ModelConfig value as config.json holds it (tuples become lists), for comparison."""
    return list(value) if isinstance(value, tuple) else value


def _diffusers_fields(config: dict) -> dict[str, Any]:
    full = {**_diffusers_defaults(), **config}
    unsupported = {k: full[k] for k, v in DIFFUSERS_FIXED_FIELDS.items() if full.get(k) != v}
    if unsupported:
        raise CheckpointError(f"diffusers config with {unsupported} is not supported: ctxf's WanDiT is the "
                              f"text-to-video Wan ({DIFFUSERS_FIXED_FIELDS})")
    fields = {ours: normalize_field(full[theirs]) for theirs, ours in DIFFUSERS_CONFIG_FIELDS}
    fields["out_channels"] = fields["out_channels"] or fields["in_channels"]
    fields["rope_theta"] = WAN_ROPE_THETA
    return fields


def _wan_fields(config: dict) -> dict[str, Any]:
    if config.get("model_type", "t2v") != "t2v":
        raise CheckpointError(f"WanModel config with model_type={config['model_type']!r} is not supported: "
                              f"ctxf's WanDiT is the text-to-video Wan (model_type t2v)")
    fields = {ours: normalize_field(config[theirs]) for theirs, ours in WAN_CONFIG_FIELDS if theirs in config}
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
             if normalize_field(getattr(cfg, name)) != value]
    if wrong:
        lines = "\n".join(f"  model.{name}={ours!r} but the checkpoint has {theirs!r}: set model.{name}={theirs!r}"
                          for name, ours, theirs in wrong)
        raise ConfigError(f"the model config does not match {source}/{CONFIG_NAME}:\n{lines}")


def weights_fields(state_dict: StateDict) -> dict[str, Any]:
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
    fields = weights_fields(checkpoint.diffusers_state_dict())
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
