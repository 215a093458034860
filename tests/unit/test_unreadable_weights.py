"""Unreadable weight files end in one `CheckpointError` paragraph (exit 2 from ctxf-generate),
naming the file and what to do, never a traceback and never advice to switch off weights_only."""

import argparse

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ctxf.ckpt.checkpoint_files import read_checkpoint
from ctxf.ckpt.wan_keys import CheckpointError
from ctxf.inference.cli import main
from ctxf.tensor_files import load_tensor

WEIGHTS = {"blocks.0.attn1.to_q.weight": torch.arange(4096, dtype=torch.float32).reshape(64, 64)}


def _truncated(path, write):
    write(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_file(tmp_path, kind):
    if kind == "empty.safetensors":
        path = tmp_path / kind
        path.write_bytes(b"")
        return path
    if kind == "truncated.safetensors":
        return _truncated(tmp_path / kind, lambda p: save_file(WEIGHTS, str(p)))
    if kind == "empty.pth":
        path = tmp_path / kind
        path.write_bytes(b"")
        return path
    if kind == "truncated.pth":
        return _truncated(tmp_path / kind, lambda p: torch.save(WEIGHTS, p))
    raise AssertionError(kind)


BAD_KINDS = ["empty.safetensors", "truncated.safetensors", "empty.pth", "truncated.pth"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unreadable_weight_file_is_a_checkpoint_error(tmp_path, kind):
    path = _bad_file(tmp_path, kind)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "cut short or damaged" in message and "again" in message


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_generate_exits_2_with_one_paragraph(tmp_path, capsys, kind):
    path = _bad_file(tmp_path, kind)
    assert main(["--output-dir", str(tmp_path / "out"), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


def test_pickled_object_is_refused_with_a_safe_conversion(tmp_path, capsys):
    path = tmp_path / "with_object.pth"
    torch.save({"state_dict": WEIGHTS, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "argparse.Namespace" in message and "state_dict()" in message
    assert "weights_only" not in message and err.value.__cause__ is None and err.value.__suppress_context__
    assert main(["--output-dir", str(tmp_path / "out"), "--checkpoint", str(path)]) == 2
    printed = capsys.readouterr().err
    assert "weights_only" not in printed and printed.strip().count("\n") == 0


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_unreadable_tensor_file_names_itself(tmp_path, suffix):
    path = tmp_path / f"prefix{suffix}"
    if suffix == ".npy":
        _truncated(path, lambda p: np.save(p, np.zeros((4, 64), np.float32)))
    else:
        _truncated(path, lambda p: save_file({"latents": torch.zeros(4, 64)}, str(p)))
    with pytest.raises(ValueError, match="cut short") as err:
        load_tensor(path, "latents", what="prefix latents")
    assert str(path) in str(err.value)
