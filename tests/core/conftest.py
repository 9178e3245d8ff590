"""Fixtures shared by the core tests: a small traced net, and a fresh clone per test."""

from __future__ import annotations

import pytest
import torch

import sparsec
from sparsec.ir.module import Module

from .nets import small_net


@pytest.fixture(scope="module")
def traced() -> Module:
    return sparsec.trace(small_net(), torch.randn(2, 3, 8, 8))


@pytest.fixture
def mod(traced: Module) -> Module:
    return traced.clone()
