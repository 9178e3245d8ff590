"""sparsec's passes, the pass manager and its instruments."""

from sparsec.passes.base import Pass, PassResult, function_pass
from sparsec.passes.manager import PassContext, PassManager, register_config, run_pipeline

__all__ = ["Pass", "PassContext", "PassManager", "PassResult", "function_pass", "register_config", "run_pipeline"]
