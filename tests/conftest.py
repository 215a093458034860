"""Shared fixtures: tiny configs and models, small enough for a 2-core CPU."""

from __future__ import annotations

import pytest
import torch

from ctxf.config import load_config


@pytest.fixture
def tiny_config():
    return load_config("tiny")


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
