"""End-to-end benchmark: ``sparsec bench`` as a script (same options). See sparsec/backends/bench.py.

    python benchmarks/e2e.py --models resnet50 --batches 1,256 --prune-ratio 0.3 --out-dir benchmarks/results
"""

import sys

from sparsec.backends.bench import main

if __name__ == "__main__":
    sys.exit(main())
