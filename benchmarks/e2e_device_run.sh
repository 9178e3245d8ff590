#!/bin/bash
# One device call for the end-to-end work (issue 5): unpack the carried CUTLASS headers and kernel
# cache, run the end-to-end GPU tests, then benchmarks/e2e.py (= sparsec bench).
#   MODELS=resnet50 BATCHES=256,1 bash benchmarks/e2e_device_run.sh
# Carry: .devcache/cutlass.tar.xz (headers of the nvidia-cutlass wheel), .devcache/kcache_e2e.tar.xz
# (prebuilt kernels; kernels missing from it are built at first load, in parallel).
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/cutlass /tmp/sparsec-cache
tar xJf .devcache/cutlass.tar.xz -C /tmp/cutlass
for k in .devcache/kcache.tar.xz .devcache/kcache_e2e.tar.xz; do [ -f $k ] && tar xJf $k -C /tmp/sparsec-cache; done
# A real (non-editable) install, and no cwd on sys.path: the repo's top-level sparsec/ would
# otherwise shadow the package-dir mapping (sparsec.backends lives in backends/).
pip install -q --no-deps --no-build-isolation --target /tmp/site . >/dev/null 2>&1 || echo "pip install failed"
export PYTHONPATH=/tmp/site PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1
export SPARSEC_CUTLASS_DIR=/tmp/cutlass/source SPARSEC_CACHE_DIR=/tmp/sparsec-cache
export SPARSEC_CUTLASS_CONFIGS=${SPARSEC_CUTLASS_CONFIGS:-compact}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
echo "=== tests $(date -u +%T)"
timeout ${TEST_TIMEOUT:-170} python3 -m pytest -m gpu tests/backends/cutlass/test_e2e_gpu.py -k "${TEST_K:-resnet18 or h100-sparse}" \
  -q -s -p no:cacheprovider -rfEs 2>&1 | grep -v DEBUG | tee "$OUT/pytest_e2e.log" | grep -E "rel err|passed|failed|^FAILED|^ERROR|^E  " | head -40
echo "=== bench $(date -u +%T)"
python3 benchmarks/e2e.py --models "${MODELS:-resnet50}" --batches "${BATCHES:-256,1}" --prune-ratio "${PRUNE:-0.3}" \
  --repeats "${REPEATS:-5}" --iters "${ITERS:-20}" --out-dir "$OUT" ${BENCH_ARGS} 2>&1 | grep -v DEBUG | tee "$OUT/e2e.log" | tail -40
echo "=== done $(date -u +%T)"
