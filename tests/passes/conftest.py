"""Helpers for the pass tests: FileCheck on the canonical printer, runners, data.

- ``filecheck(text, checks)`` runs the ``filecheck`` CLI (the PyPI clone of
  LLVM FileCheck) with ``checks`` as the check file and ``text`` on stdin,
  and fails the test with FileCheck's own report when a check does not hold.
- ``run(mod, pipeline)`` runs a pipeline through the PassManager (which
  recompiles and verifies after each pass) and returns the records.
- ``ints(*shape)`` draws small integer-valued float tensors: arithmetic on
  them is exact, so exact passes can be compared with ``torch.equal``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from sparsec.ir import print_module
from sparsec.passes import PassManager


def _filecheck(text: str, checks: str, tmp_path) -> None:
    check_file = tmp_path / "checks.txt"
    check_file.write_text(textwrap.dedent(checks))
    proc = subprocess.run(
        [sys.executable, "-m", "filecheck", "--dump-input", "fail", str(check_file)],
        input=text, capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"FileCheck failed:\n{proc.stdout}{proc.stderr}\n--- input ---\n{text}", pytrace=False)


@pytest.fixture
def filecheck(tmp_path):
    """``filecheck(text, checks)``: assert that ``text`` satisfies FileCheck ``checks``."""
    return lambda text, checks: _filecheck(text, checks, tmp_path)


def run(mod, pipeline: str):
    """Run ``pipeline`` on ``mod`` in place; return the PassRecords."""
    return PassManager.parse(pipeline).run(mod)


def run_twice_is_once(mod, pipeline: str) -> None:
    """Assert idempotence: a second run prints the same IR and reports no change."""
    run(mod, pipeline)
    once = print_module(mod)
    records = run(mod, pipeline)
    assert [r.modified for r in records] == [False] * len(records), [(r.name, r.stats) for r in records]
    assert print_module(mod) == once


def ints(*shape: int, lo: int = -3, hi: int = 4, dtype=torch.float32, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random integer-valued floats in ``[lo, hi)``, never all zero."""
    while True:
        t = torch.randint(lo, hi, shape, generator=gen).to(dtype)
        if t.abs().sum() > 0:
            return t


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Max absolute error relative to the largest reference magnitude."""
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@torch.no_grad()
def randomise_bn(model: torch.nn.Module, gen: torch.Generator | None = None) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    return model
