"""The tuning DB (schema, lookup, the shipped files) and the ``sparsec tune`` command's checks (CPU only)."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from click.testing import CliRunner

from sparsec.backends.cutlass import tuning
from sparsec.backends.cutlass.config import KernelConfig
from sparsec.errors import UsageError

KEYS = {"schema", "arch", "device", "created", "versions", "entries"}


def _db(entries):
    return {"schema": tuning.SCHEMA, "arch": "sm_90a", "device": "x", "created": "2026-01-01T00:00:00Z",
            "versions": {"torch": "t", "cuda": "c", "cutlass": "k"}, "entries": entries}


def _entry(m, n, k, dtype, dense, sparse):
    return {"m": m, "n": n, "k": k, "dtype": dtype, "dense": {"config": dense, "us": 2.0}, "sparse": {"config": sparse, "us": 1.0}}


@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_shipped_dbs_follow_the_schema_and_name_real_configs(arch):
    path = resources.files("sparsec.backends.cutlass").joinpath("tuned", f"{arch}.json")
    if not path.is_file():
        pytest.skip(f"no {arch} DB shipped")
    doc = json.loads(path.read_text())
    assert set(doc) == KEYS and doc["schema"] == "sparsec.tuning/1" and doc["arch"] == arch
    assert set(doc["versions"]) == {"torch", "cuda", "cutlass"} and doc["entries"]
    if arch == "sm_80":
        assert "NOT A100 timings" in doc["device"]
    for e in doc["entries"]:
        assert set(e) == {"m", "n", "k", "dtype", "dense", "sparse"} and e["dtype"] in ("fp16", "bf16")
        for key in ("dense", "sparse"):
            if e[key]:
                cfg = KernelConfig.from_name(e[key]["config"])
                assert (cfg.arch, cfg.dtype, cfg.sparse) == (arch, e["dtype"], key == "sparse") and e[key]["us"] > 0


def test_lookup_exact_then_nearest_and_by_dtype():
    a, b = KernelConfig(tile=(256, 128, 128), cluster=(2, 1)), KernelConfig(tile=(64, 128, 128), schedule="pingpong")
    db = _db([_entry(4096, 8192, 4096, "fp16", "sm90a_fp16_dn_t128x256x64_c1x2_coop_identity", a.name),
              _entry(256, 64, 256, "fp16", "sm90a_fp16_dn_t64x128x64_c1x2_pp_identity", b.name)])
    assert tuning.lookup(db, 4096, 8192, 4096, "fp16", True) == a
    assert tuning.lookup(db, 300, 100, 256, "fp16", True) == b  # nearest in log space
    assert tuning.lookup(db, 4096, 8192, 4096, "bf16", True) is None
    chosen = tuning.choose(300, 100, 256, "fp16", True, activation="relu", residual=True, db=db)
    assert chosen == b.with_epilogue("relu", residual=True)
    assert tuning.choose(1, 1, 16, "bf16", False, db=db).dtype == "bf16"  # falls back to the default


def test_merge_replaces_same_shape_and_sorts():
    old = [_entry(1, 2, 16, "fp16", "a", "b"), _entry(3, 4, 16, "fp16", "c", "d")]
    new = [_entry(1, 2, 16, "fp16", "e", "f")]
    merged = tuning.merge_entries(old, new)
    assert [(e["m"], e["dense"]["config"]) for e in merged] == [(1, "e"), (3, "c")]


def test_load_db_refuses_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(UsageError, match="not a sparsec tuning DB"):
        tuning.load_db(p)


def test_rotations_exceed_l2():
    assert tuning.rotations(1 << 20) * (1 << 20) >= 2 * tuning.L2_BYTES or tuning.rotations(1 << 20) == 16
    assert tuning.rotations(1 << 30) == 2


def test_tune_cli_checks_its_arguments_before_touching_the_gpu():
    from sparsec.cli.main import cli

    res = CliRunner().invoke(cli, ["tune", "--shape", "12,x,3"])
    assert res.exit_code == 2 and "bad --shape '12,x,3'" in res.output
    res = CliRunner().invoke(cli, ["tune"])
    assert res.exit_code == 2 and "nothing to tune" in res.output
    res = CliRunner().invoke(cli, ["tune", "--suite", "nope"])
    assert res.exit_code == 2 and "unknown suite 'nope'" in res.output


def test_tune_model_lists_the_shapes_its_compile_looks_up():
    """--model --list needs no GPU: ResNet-18's 1x1 downsample convs and its fc, at the compile's batch and
    sizes (64x64 input, batch 2); its kxk convs stay dense without a lookup, so they are not tuned."""
    from sparsec.cli.main import cli

    res = CliRunner().invoke(cli, ["tune", "--model", "zoo:torchvision/resnet18", "--input-shape", "2,3,64,64", "--list"])
    assert res.exit_code == 0, res.output
    assert res.output.split("\n")[:-1] == [
        "sm_90a fp16 M=128 N=128 K=64", "sm_90a fp16 M=256 N=32 K=128", "sm_90a fp16 M=512 N=8 K=256",
        "sm_90a fp16 M=1000 N=2 K=512"]
    for args, message in ((["--target", "h100"], "target 'h100' has no 2:4 kernels"),
                          (["--arch", "sm_80", "--target", "h100-sparse"], "--arch sm_80 does not match"),
                          (["--pipeline", "fold-bn"], "has no sparsify-2-4 pass")):
        res = CliRunner().invoke(cli, ["tune", "--model", "zoo:torchvision/resnet18", "--list", *args])
        assert res.exit_code in (1, 2) and message in res.output, res.output
    res = CliRunner().invoke(cli, ["tune", "--input-shape", "1,3,8,8"])
    assert res.exit_code == 2 and "describe a --model" in res.output
