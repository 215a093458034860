"""Low-rank adapters (LoRA) on a model's linear layers: add, name, merge.

A targeted `nn.Linear` becomes a `LoRALinear`: the same `weight` and `bias` (same parameter
objects, same state-dict names, so base checkpoints load unchanged) plus `lora_A [rank, in]`
and `lora_B [out, rank]`; the forward is `x W^T + b + (alpha / rank) (x A^T) B^T`. `lora_B`
starts at zero, so adding adapters does not change the model's output. Merging folds the
adapter into `weight` (W + (alpha / rank) B A) and turns the layer back into a plain
`nn.Linear`.

Adapter state-dict keys are the layer's name plus `.lora_A` / `.lora_B` (e.g.
`blocks.0.attn1.to_q.lora_A`); everything else in the state dict is the base model.

Targets are module-name patterns matched against whole dotted segments: `to_q` matches
`blocks.3.attn1.to_q` and `blocks.3.attn2.to_q`; `attn1.to_out.0` only self-attention's output;
`ffn` every linear inside each feed-forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ADAPTER_SUFFIXES = (".lora_A", ".lora_B")


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def merged_linear(self) -> nn.Linear:
        """A plain `nn.Linear` with the adapter folded into its weight."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(merge_weight(self.weight, self.lora_A, self.lora_B, self.scaling))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def merge_weight(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * B @ A, computed in float32 and returned in the weight's dtype."""
    delta = (lora_b.float() @ lora_a.float()) * scaling
    return (weight.float() + delta).to(weight.dtype)


def matches(name: str, pattern: str) -> bool:
    """Whether the dotted module `name` contains `pattern` as whole segments."""
    segments, wanted = name.split("."), pattern.split(".")
    return any(segments[i:i + len(wanted)] == wanted for i in range(len(segments) - len(wanted) + 1))


def target_linears(model: nn.Module, targets: list[str]) -> dict[str, list[str]]:
    """For each pattern, the names of the `nn.Linear` modules it selects (possibly none)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return {pattern: [name for name in linears if matches(name, pattern)] for pattern in targets}


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> list[str]:
    """Replace every targeted linear by a `LoRALinear`; freeze everything but the adapters.
    Returns the adapted module names. A pattern that selects nothing is a ValueError."""
    selected = target_linears(model, targets)
    empty = [pattern for pattern, names in selected.items() if not names]
    if empty:
        raise ValueError(f"LoRA targets {empty} name no linear layer of the model; use names such as to_q, to_k, "
                         f"to_v, to_out.0, ffn, attn1.to_q")
    names = sorted({name for found in selected.values() for name in found})
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha))
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight in place; returns how many layers were merged."""
    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name, module in adapted:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.merged_linear())
    return len(adapted)


def is_adapter_key(key: str) -> bool:
    return key.endswith(ADAPTER_SUFFIXES)


def split_adapter(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base, adapter) halves of a state dict of a LoRA-adapted model."""
    base = {k: v for k, v in state_dict.items() if not is_adapter_key(k)}
    adapter = {k: v for k, v in state_dict.items() if is_adapter_key(k)}
    return base, adapter


def merge_state_dict(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor],
                     scaling: float) -> dict[str, torch.Tensor]:
    """Base weights with every adapter pair folded in (`<layer>.weight += scaling * B A`)."""
    layers = sorted({k[: -len(".lora_A")] for k in adapter if k.endswith(".lora_A")})
    unpaired = sorted({k.rsplit(".", 1)[0] for k in adapter} - set(layers)) + \
        sorted(layer for layer in layers if f"{layer}.lora_B" not in adapter)
    if unpaired:
        raise ValueError(f"adapter layers without both lora_A and lora_B: {unpaired[:5]}")
    merged = dict(base)
    for layer in layers:
        key = f"{layer}.weight"
        if key not in base:
            raise KeyError(f"the adapter targets {layer}, which the base weights do not have ({key})")
        lora_a, lora_b = adapter[f"{layer}.lora_A"], adapter[f"{layer}.lora_B"]
        if (lora_b.shape[0], lora_a.shape[1]) != tuple(base[key].shape) or lora_a.shape[0] != lora_b.shape[1]:
            raise ValueError(f"adapter {layer}: B {tuple(lora_b.shape)} x A {tuple(lora_a.shape)} does not fit the "
                             f"base weight {tuple(base[key].shape)}; the adapter was trained on another geometry")
        merged[key] = merge_weight(base[key], lora_a, lora_b, scaling)
    return merged
