"""Fixtures for the CLI tests: a tiny exported net, its reference, a runner, FileCheck."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sparsec.cli.main import cli


class TinyNet(nn.Module):
    """conv -> BN -> relu -> global mean -> linear: 285 parameters, 27,728 MACs at 2x3x8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


@dataclass(frozen=True)
class Tiny:
    path: Path  # a torch.export.save program
    net: nn.Module  # the eager reference

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding BN really changes the conv
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    path = tmp_path_factory.mktemp("tiny") / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 3, 8, 8),)), path)
    return Tiny(path, net)


@dataclass
class Run:
    """``sparsec ARGS`` run in-process; stdout and stderr kept apart."""

    runner: CliRunner

    def __call__(self, *args: str | Path, code: int | None = 0):
        result = self.runner.invoke(cli, [str(a) for a in args])
        if code is not None:
            assert result.exit_code == code, (
                f"exit {result.exit_code}, wanted {code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
                + (f"\nexception: {result.exception!r}" if result.exception and not isinstance(result.exception, SystemExit) else "")
            )
        return result


@pytest.fixture
def run() -> Run:
    return Run(CliRunner())


@pytest.fixture
def filecheck(tmp_path):
    """``filecheck(text, checks)``: assert ``text`` (say, `sparsec opt` stdout) satisfies FileCheck ``checks``."""

    def check(text: str, checks: str) -> None:
        check_file = tmp_path / "checks.txt"
        check_file.write_text(textwrap.dedent(checks))
        proc = subprocess.run([sys.executable, "-m", "filecheck", "--dump-input", "fail", str(check_file)],
                              input=text, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.fail(f"FileCheck failed:\n{proc.stdout}{proc.stderr}", pytrace=False)

    return check
