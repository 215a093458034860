"""LoRA adapters: targets, frozen base, exact merge (state dicts and modules)."""

from __future__ import annotations

import pytest
import torch

from ctxf.config import load_config
from ctxf.models.lora import LoRALinear, add_lora, merge_lora, merge_state_dict, split_adapter, target_linears
from ctxf.models.wan import WanDiT


def _inputs(cfg):
    return (torch.randn(1, cfg.model.in_channels, 3, 8, 8), torch.tensor([300.0]), torch.randn(1, 16, cfg.model.text_dim))


def test_targets_select_whole_segments():
    model = WanDiT(load_config("tiny").model)
    found = target_linears(model, ["to_q", "attn1.to_out.0", "ffn", "to_"])
    assert found["to_q"] == ["blocks.0.attn1.to_q", "blocks.0.attn2.to_q", "blocks.1.attn1.to_q", "blocks.1.attn2.to_q"]
    assert found["attn1.to_out.0"] == ["blocks.0.attn1.to_out.0", "blocks.1.attn1.to_out.0"]
    assert found["ffn"] == ["blocks.0.ffn.net.0.proj", "blocks.0.ffn.net.2", "blocks.1.ffn.net.0.proj",
                            "blocks.1.ffn.net.2"]
    assert found["to_"] == []  # a prefix is not a segment
    with pytest.raises(ValueError, match=r"\['to_'\] name no linear layer"):
        add_lora(model, ["to_q", "to_"], rank=2, alpha=2.0)


def test_adapters_start_as_identity_and_keep_base_names():
    cfg = load_config("tiny")
    model = WanDiT(cfg.model)
    names_before = set(model.state_dict())
    inputs = _inputs(cfg)
    with torch.no_grad():
        before = model(*inputs)
    adapted = add_lora(model, ["to_q", "to_k", "to_v", "to_out.0", "ffn"], rank=4, alpha=8.0)
    assert len(adapted) == 2 * (4 * 2 + 2)  # per block: 4 projections x 2 attentions + 2 ffn linears
    base, adapter = split_adapter(model.state_dict())
    assert set(base) == names_before
    assert len(adapter) == 2 * len(adapted)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(adapter)
    with torch.no_grad():
        assert torch.equal(model(*inputs), before)


def test_training_changes_only_adapters_and_merging_is_exact():
    cfg = load_config("tiny")
    model = WanDiT(cfg.model)
    add_lora(model, ["to_q", "to_v", "ffn"], rank=4, alpha=4.0)
    base_before = {k: v.clone() for k, v in split_adapter(model.state_dict())[0].items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = _inputs(cfg)
    for _ in range(3):
        optimizer.zero_grad()
        model(*inputs).square().mean().backward()
        optimizer.step()
    base_after, adapter = split_adapter(model.state_dict())
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if k.endswith("lora_B"))

    with torch.no_grad():
        adapted_out = model(*inputs)
        plain = WanDiT(cfg.model)
        plain.load_state_dict(merge_state_dict(base_after, adapter, scaling=1.0))
        merged_out = plain(*inputs)
        assert merge_lora(model) == 12
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        in_place_out = model(*inputs)
    assert (merged_out - adapted_out).abs().max() < 1e-6
    assert (in_place_out - adapted_out).abs().max() < 1e-6


def test_merge_refuses_an_adapter_of_another_geometry():
    cfg = load_config("tiny")
    base = WanDiT(cfg.model).state_dict()
    adapter = {"blocks.0.attn1.to_q.lora_A": torch.zeros(2, 64), "blocks.0.attn1.to_q.lora_B": torch.zeros(32, 2)}
    with pytest.raises(ValueError, match="another geometry"):
        merge_state_dict(base, adapter, 1.0)
    with pytest.raises(KeyError, match="blocks.9.attn1.to_q"):
        merge_state_dict(base, {"blocks.9.attn1.to_q.lora_A": torch.zeros(2, 32),
                                "blocks.9.attn1.to_q.lora_B": torch.zeros(32, 2)}, 1.0)
