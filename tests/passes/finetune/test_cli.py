"""`sparsec finetune` and `sparsec eval`: a tiny end-to-end run and the user-facing errors."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner

from sparsec.cli.main import cli
from sparsec.passes.finetune import data as D

NET = textwrap.dedent("""
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
""")


def sparsec(*args, code=0):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == code, f"exit {res.exit_code}\n{res.stdout}\n{res.stderr}\n{res.exception!r}"
    return res


@pytest.fixture
def folder(tmp_path):
    """An ImageFolder with train/ and val/: class 'dark' and class 'bright', 12x12 PNGs."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("val", 8)):
        for cls, base in (("bright", 180), ("dark", 40)):
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                px = (base + torch.randint(-30, 30, (12, 12, 3), generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(px.numpy()).save(d / f"{i}.png")
    (tmp_path / "net.py").write_text(NET)
    return tmp_path


def test_finetune_then_eval_on_an_image_folder(folder):
    out, metrics, ck = folder / "ft.pt2", folder / "m.json", folder / "ck"
    sparsec("finetune", f"{folder / 'net.py'}:build", "--data", folder / "data", "--image-size", 12,
            "--epochs", 2, "--lr", 0.05, "--batch-size", 8, "--device", "cpu", "--label-smoothing", 0.1,
            "--metrics", metrics, "--checkpoint-dir", ck, "-o", out)
    assert out.is_file() and (ck / "last.pt").is_file()
    doc = json.loads(metrics.read_text())
    assert doc["config"]["epochs"] == 2 and any("val_top1" in h for h in doc["history"])
    res = sparsec("eval", out, "--data", folder / "data", "--device", "cpu", "-f", "json")
    got = json.loads(res.stdout)
    assert got["n"] == 16 and 0 <= got["top1"] <= got["top5"] <= 1 and got["loss"] > 0
    assert got["image_size"] == 12 and got["channels"] == 3


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_DIRS", ())
    (tmp_path / "net.py").write_text(NET)
    res = sparsec("--cache-dir", tmp_path / "cache", "finetune", f"{tmp_path / 'net.py'}:build",
                  "--data", "fashion-mnist", "--data-dir", tmp_path / "none", code=2)
    assert "Fashion-MNIST dataset was not found" in res.stderr
    assert "apt-get install dataset-fashion-mnist" in res.stderr
    res = sparsec("eval", f"{tmp_path / 'net.py'}:build", "--data", tmp_path / "no-such-dir", code=2)
    assert "neither a known dataset nor a directory" in res.stderr


def test_kd_weight_needs_a_teacher(folder):
    res = sparsec("finetune", f"{folder / 'net.py'}:build", "--data", folder / "data", "--kd-weight", 1, code=2)
    assert "--kd-weight needs a --teacher" in res.stderr


def test_shape_mismatch_names_both_shapes(folder):
    res = sparsec("finetune", f"{folder / 'net.py'}:build", "--data", folder / "data", "--input-shape",
                  "2,3,16,16", "--image-size", 12, "--batch-size", 8, "--device", "cpu", code=2)
    assert "[N, 3, 16, 16]" in res.stderr and "[3, 12, 12]" in res.stderr
