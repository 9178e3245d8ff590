"""The tvm variants of `sparsec bench` (backends/tvm/bench.py): their errors, on the CPU machine."""

from __future__ import annotations

import pytest
from torch import nn

from sparsec.backends.tvm.bench import VARIANTS, artifact_name, tvm_variant
from sparsec.errors import UsageError


def test_variants_name_the_gpu_tvm_targets():
    assert VARIANTS == {"tvm": "h100-tvm", "tvm-24": "h100-sparse-tvm", "tvm-graph": "h100-tvm",
                        "tvm-24-graph": "h100-sparse-tvm"}
    assert artifact_name("resnet50", "h100-sparse-tvm", 256) == "resnet50-h100-sparse-tvm-bs256.sparsec"


def test_without_artifacts_says_how_to_build_them(tmp_path):
    with pytest.raises(UsageError, match="variant 'tvm' runs prebuilt tvm artifacts") as e:
        tvm_variant(nn.Identity(), "resnet50", 8, "tvm", None, tmp_path)
    assert "--tvm-artifacts DIR" in e.value.fix and "tvm_bench.py build" in e.value.fix
    with pytest.raises(UsageError, match="no prebuilt tvm artifact resnet50-h100-sparse-tvm-bs8.sparsec") as e:
        tvm_variant(nn.Identity(), "resnet50", 8, "tvm-24-graph", tmp_path, tmp_path)
    assert "--models resnet50 --batches 8 --targets h100-sparse-tvm" in e.value.fix
