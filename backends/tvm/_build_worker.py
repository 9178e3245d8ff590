"""Subprocess entry of a CUDA build: ``python -m sparsec.backends.tvm._build_worker REQUEST.json``.

It runs in its own process because the stub ``libcuda.so.1`` must be on
``LD_LIBRARY_PATH`` before TVM loads its CUDA runtime (see ``lowering.py``).
The request names the decomposed program (``torch.export.save``), the TVM
target, the output library, the reply file, and the kernel ops to route.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import torch

    from sparsec.backends.tvm.custom_ops import KernelOp, register_kernel_op
    from sparsec.backends.tvm.lowering import import_and_build

    req = json.loads(Path(argv[0]).read_text())
    for k in req["kernel_ops"]:
        register_kernel_op(KernelOp(**k))
    from sparsec._builtins import load_op_libraries

    load_op_libraries()
    from sparsec.errors import SparsecError

    ep = torch.export.load(req["program"])
    try:
        info = import_and_build(ep, req["target"], Path(req["out"]), req.get("packed_convs", False))
    except SparsecError as exc:  # hand it to the parent as it is, not as a traceback
        info = {"error": {k: getattr(exc, k) for k in ("what", "where", "expected", "actual", "fix")}}
    except Exception as exc:  # TVM's own passes (dlight schedules, codegen, nvcc)
        info = {"error": {"what": "TVM's compile pipeline failed on this graph", "where": "tvm.compile",
                          "actual": f"{type(exc).__name__}: {str(exc).strip()[-1500:]}",
                          "fix": "this is a TVM limitation on this graph: try fp32 (drop to-dtype from the "
                                 "pipeline) or another target; rerun with --debug for the full trace"}}
    Path(req["reply"]).write_text(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
