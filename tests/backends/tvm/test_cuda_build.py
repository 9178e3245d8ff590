"""a100-tvm / h100-tvm on a machine with no GPU: the stub libcuda, nvcc fatbins, and the refusal of CUDA source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsec
from sparsec.backends.tvm import fatbin
from sparsec.errors import ArtifactError

pytestmark = pytest.mark.slow  # each CUDA build runs a subprocess and nvcc: 8-15 s on 2 cores


@pytest.mark.parametrize("target,arch", [("h100-tvm", "sm_90a"), ("a100-tvm", "sm_80")])
def test_cuda_artifact_holds_a_fatbin_for_the_arch(tvm, nvcc, small_net, tmp_path, target, arch):
    res = sparsec.compile(small_net, (torch.randn(2, 3, 32, 32),), target=target, output=str(tmp_path / "m.sparsec"))
    lib = (res.artifact / "model.so").read_bytes()
    report = fatbin.scan(lib)
    assert report.archs == (arch,) and not report.cuda_source
    assert b"__global__" not in lib
    tvm_sec = json.loads((res.artifact / "manifest.json").read_text())["payload"]["tvm"]
    assert tvm_sec["target"] == {"kind": "cuda", "arch": arch} and tvm_sec["device"] == "cuda"
    assert tvm_sec["fatbin"]["cubin_archs"] == [arch] and tvm_sec["fatbin"]["cuda_source"] is False
    if not torch.cuda.is_available():
        with pytest.raises(ArtifactError, match=f"runs on an NVIDIA GPU \\({arch}\\), and torch sees no CUDA device"):
            sparsec.load(res.artifact)


def test_build_without_the_stub_embeds_source_and_is_refused(tvm, nvcc, small_net, tmp_path):
    """What the stub prevents: TVM without a loadable libcuda exports CUDA source; sparsec refuses it."""
    from sparsec.backends.tvm.backend import check_library
    from sparsec.backends.tvm.lowering import prepare
    from sparsec.registry import registry

    mod = sparsec.trace(small_net, (torch.randn(2, 3, 32, 32),))
    program = tmp_path / "p.pt2"
    torch.export.save(prepare(mod).ep, str(program))
    lib = tmp_path / "model.so"
    script = ("import sys, torch; from pathlib import Path; from sparsec.backends.tvm.lowering import import_and_build;"
              "import_and_build(torch.export.load(sys.argv[1]), {'kind': 'cuda', 'arch': 'sm_90a'}, Path(sys.argv[2]))")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "TVM_CUDA_COMPILE_MODE")}
    subprocess.run([sys.executable, "-c", script, str(program), str(lib)], env=env, check=True, capture_output=True)
    report = fatbin.scan(lib.read_bytes())
    assert report.cuda_source and report.archs == ()
    with pytest.raises(ArtifactError, match="refusing to write the h100-tvm artifact: the TVM library embeds CUDA "
                                           "source .* and holds no sm_90a cubin") as e:
        check_library(lib, registry().get("target", "h100-tvm"))
    assert "stub libcuda.so.1" in e.value.fix


def test_sm_90a_and_sm_90_differ_in_the_arch_specific_flag(tvm, nvcc, small_net, tmp_path):
    """The 'a' of sm_90a is read from fatbin entry flags: pin it on two builds of the same module."""
    from sparsec.backends.target import Target
    from sparsec.backends.tvm.lowering import build, prepare

    prepared = prepare(sparsec.trace(small_net, (torch.randn(2, 3, 32, 32),)))
    archs = {}
    for arch in ("sm_90", "sm_90a"):
        out = tmp_path / arch
        out.mkdir()
        lib, _ = build(prepared, Target(name=f"t-{arch}", backend="tvm", description="", arch=arch), out)
        archs[arch] = fatbin.scan(Path(lib).read_bytes()).archs
    assert archs == {"sm_90": ("sm_90",), "sm_90a": ("sm_90a",)}


def test_cli_compile_h100_tvm_on_a_cpu_machine(tvm, nvcc, small_net, tmp_path):
    """`sparsec compile --target h100-tvm` works here and writes a GPU artifact; inspect shows the split."""
    from click.testing import CliRunner

    from sparsec.cli.main import cli

    spec = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(small_net, (torch.randn(2, 3, 32, 32),)), str(spec))
    out = tmp_path / "net.sparsec"
    runner = CliRunner()
    res = runner.invoke(cli, ["compile", str(spec), "--target", "h100-tvm", "-o", str(out)])
    assert res.exit_code == 0, res.stderr + repr(res.exception)
    assert fatbin.scan((out / "model.so").read_bytes()).archs == ("sm_90a",)
    res = runner.invoke(cli, ["inspect", str(spec), "--target", "h100-tvm", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    verdicts = [n["support"] for n in doc["nodes"] if n.get("support")]
    assert verdicts and all(v["supported"] for v in verdicts)
    assert any("cudnn: packed sparsec.conv2d" in v["reason"] for v in verdicts)  # fp32: no CUTLASS kernel


def test_gpu_targets_call_cutlass_kernels_and_cudnn(tvm, nvcc, tmp_path):
    """h100-tvm / h100-sparse-tvm: GEMMs as packed CUTLASS calls, the other convs as packed cuDNN calls,
    the kernels listed for preloading, a fatbin for the glue and no CUDA source (prebuilt.py builds them)."""
    from .prebuilt import build_prebuilt

    for path in build_prebuilt(tmp_path):
        payload = json.loads((path / "manifest.json").read_text())["payload"]
        sparse = "-sparse-" in path.name
        assert payload["files"] == ["kernels.json", "model.so", "params.pt", "tuning.json"]
        layers = {r["node"]: (r["kind"], r["sparse"]) for r in payload["cutlass"]["layers"]}
        assert sorted(k for k, _ in layers.values()) == (["conv-im2col"] if sparse else []) + ["conv1x1", "conv1x1", "linear"]
        assert all(s == sparse for _, s in layers.values())
        kernels = json.loads((path / "kernels.json").read_text())["kernels"]
        assert sorted(kernels) == payload["cutlass"]["kernels"] and all(k.startswith("sm90a_fp16_") for k in kernels)
        assert payload["tvm"]["kernel_providers"] == ["sparsec.backends.tvm.conv_kernels",
                                                      "sparsec.backends.tvm.cutlass_kernels"]
        lib = (path / "model.so").read_bytes()
        gemm = b"sparsec.gemm24" if sparse else b"sparsec.gemm_dense"
        assert gemm in lib and b"sparsec.conv2d_nhwc" in lib  # the VM's packed-call table
        report = fatbin.scan(lib)
        assert report.archs == ("sm_90a",) and not report.cuda_source and b"__global__" not in lib
