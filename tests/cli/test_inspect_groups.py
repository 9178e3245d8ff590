"""``sparsec inspect SPEC --show groups``: the channel groups of the pruning analysis,
as a table, text, JSON and DOT (and SVG through graphviz's ``dot``)."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

# A net whose first conv feeds an op with no channel rule (a custom op), then a
# residual block, then a classifier: one unprunable group (the op, the node and
# the line are named), prunable ones, and the model output.
NET = textwrap.dedent('''
    import torch
    from torch import nn

    @torch.library.custom_op("sparsec_groups_test::mystery", mutates_args=())
    def mystery(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @mystery.register_fake
    def _(x):
        return torch.empty_like(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = nn.Conv2d(16, 32, 3, padding=1)
            self.c3 = nn.Conv2d(32, 32, 1)
            self.fc = nn.Linear(32, 5)

        def forward(self, x):
            y = torch.ops.sparsec_groups_test.mystery(self.c1(x))
            y = torch.relu(self.c2(y))
            y = y + self.c3(y)
            return self.fc(y.mean((2, 3)))

    def build():
        torch.manual_seed(0)
        return Net().eval()
''')
MYSTERY_LINE = next(i for i, line in enumerate(NET.splitlines(), 1) if "mystery(self.c1(x))" in line)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("groups") / "groupnet.py"
    path.write_text(NET)
    return f"{path}:build"


def _args(spec, *more):
    return ("inspect", spec, "--input-shape", "1,3,8,8", "--show", "groups", *more)


def test_groups_json_lists_members_size_and_why(run, spec):
    data = json.loads(run(*_args(spec, "-f", "json")).stdout)
    groups = {g["producer"]: g for g in data["groups"]}
    assert set(groups) == {"conv2d:1", "conv2d_1:1", "linear:1"}  # c3's output is coupled to c2's (residual)
    c1, res, fc = groups["conv2d:1"], groups["conv2d_1:1"], groups["linear:1"]
    # c1's output reaches an op with no rule: unprunable, with the op, the node and its source line
    assert not c1["prunable"] and c1["units"] == 16
    assert "no channel rule for sparsec_groups_test.mystery" in c1["why_not"]
    assert "node 'mystery'" in c1["why_not"] and f"groupnet.py:{MYSTERY_LINE}" in c1["why_not"]
    # the residual couples c2's and c3's outputs, the add, and the classifier's input
    assert res["prunable"] and res["why_not"] is None and res["units"] == 32
    assert {"conv2d_1:1", "conv2d_2:1", "add:1"} <= set(res["values"])
    assert {"c2.weight", "c3.weight", "c3.bias", "fc.weight"} <= set(res["params"])
    assert "c2_weight:0" in res["members"] and "fc_weight:1" in res["members"]
    assert not fc["prunable"] and fc["why_not"] == "model output 'linear'"
    assert data["totals"] == {"groups": 3, "prunable": 1} and data["total_groups"] > 3


def test_groups_table_and_text(run, spec):
    table = run(*_args(spec)).stdout
    row = next(line for line in table.splitlines() if "conv2d_1:1" in line and "│" in line)
    assert "prunable" in row and "32" in row
    assert "unprunable: conv2d:1: no channel rule for sparsec_groups_test.mystery" in table
    assert "3 channel groups with a producer, 1 prunable" in table
    text = run(*_args(spec, "-f", "text")).stdout
    lines = text.splitlines()
    k = lines.index(next(line for line in lines if line.startswith("group ") and "conv2d_1:1" in line))
    assert lines[k].endswith("32 units, prunable")
    assert lines[k + 1].startswith("  values:  ") and "add:1" in lines[k + 1]
    assert lines[k + 2].startswith("  params:  ") and "fc.weight" in lines[k + 2]
    assert run(*_args(spec, "-f", "text")).stdout == text  # deterministic


def test_groups_dot_and_svg(run, spec, tmp_path, monkeypatch):
    dot = run(*_args(spec, "-f", "dot")).stdout
    assert dot.startswith("graph channels {") and dot.rstrip().endswith("}")
    assert "style=filled; color=palegreen" in dot and "style=filled; color=lightgrey" in dot
    assert "no channel rule for sparsec_groups_test.mystery" in dot and '"add:1"' in dot
    run(*_args(spec, "-f", "dot", "-o", tmp_path / "groups.dot"))
    assert (tmp_path / "groups.dot").read_text() == dot
    # no graphviz: a clear error, no file
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    res = run(*_args(spec, "-f", "dot", "-o", tmp_path / "groups.svg"), code=1)
    assert "graphviz's 'dot' program is not installed" in res.stderr and not (tmp_path / "groups.svg").exists()
    # a stand-in dot that writes what it was given
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "dot"
    fake.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\nsrc = sys.stdin.read()\n"
                    "open(args[args.index('-o') + 1], 'w').write('<svg>' + args[0] + src + '</svg>')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    run(*_args(spec, "-f", "dot", "-o", tmp_path / "groups.svg"))
    svg = (tmp_path / "groups.svg").read_text()
    assert svg.startswith("<svg>-Tsvg") and "graph channels {" in svg


def test_groups_view_refuses_a_target(run, spec):
    res = run(*_args(spec, "--target", "cpu"), code=2)
    assert "--target does not apply to --show groups" in res.stderr


def test_columns_still_work_and_unknown_views_are_columns(run, spec):
    res = run("inspect", spec, "--input-shape", "1,3,8,8", "--show", "group", code=2)
    assert "unknown --show column 'group'" in res.stderr
    out = run("inspect", spec, "--input-shape", "1,3,8,8", "--show", "name,op").stdout
    assert "aten.conv2d" in out


def test_groups_of_a_zoo_model(run):
    data = json.loads(run("inspect", "zoo:torchvision/resnet18", "--input-shape", "1,3,32,32",
                          "--show", "groups", "-f", "json").stdout)
    assert data["totals"] == {"groups": 13, "prunable": 12}  # every conv group; the classifier's output is not
