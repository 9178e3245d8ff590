#!/bin/bash
# One device call for the TVM backend (issue 7): install sparsec, the CUTLASS headers, the kernel
# caches and the TVM runtime (no TVM compiler: the artifacts were built on the CPU machine by
# `python benchmarks/tvm_bench.py build`), run the GPU tests that need no compiler, then
# `sparsec bench` with the tvm variants beside eager, torch.compile and the CUTLASS artifacts.
#   MODELS=resnet50 BATCHES=256,8 bash benchmarks/tvm_device_run.sh
# Carry: .devcache/cutlass.tar.xz .devcache/kcache_e2e.tar.xz (a superset of kcache.tar.xz: every ResNet-50
#        kernel of the compact configs) .devcache/tvm (runtime/ libs, whl/ apache-tvm-ffi, artifacts/ incl. prebuilt/)
# MobileNetV2 / EfficientNet-B0 artifacts are there too; their 9 epilogue kernels are not in the cache and
# are built at first load (parallel nvcc, ~2 min): MODELS=mobilenet_v2,efficientnet_b0 in a second call.
# Results: $OUT/e2e_<gpu>_tvm.json (+ .png), $OUT/pytest_tvm.log, $OUT/bench_tvm.log.
set -o pipefail
ROOT=$PWD
. benchmarks/device_setup.sh
pip install -q --no-deps --target /tmp/site .devcache/tvm/whl/apache_tvm_ffi-*.whl >/dev/null 2>&1 \
  || echo "apache-tvm-ffi install failed"
export SPARSEC_CUTLASS_CONFIGS=compact   # the configs the artifacts were built with (tvm_bench.py build --configs)
export SPARSEC_TVM_RUNTIME_DIR=$ROOT/.devcache/tvm/runtime SPARSEC_TVM_PREBUILT=$ROOT/.devcache/tvm/artifacts/prebuilt
python3 -c "import tvm_ffi, sparsec; print('tvm_ffi', tvm_ffi.__version__, 'sparsec from', sparsec.__file__)"
echo "=== tests $(date -u +%T)"
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -m gpu tests/backends/tvm -q -p no:cacheprovider -rA 2>&1 \
  | grep -v DEBUG | tee "$OUT/pytest_tvm.log" | grep -E "passed|failed|skipped|^PASSED|^FAILED|^ERROR|^E  |SKIPPED" | head -40
GRAPH="tvm-graph,"; GRAPH24=",tvm-24-graph"
if ! grep -q "^PASSED.*replays_as_a_cuda_graph" "$OUT/pytest_tvm.log"; then  # a failed capture can poison the context
  echo "CUDA-graph capture of a tvm artifact did not pass its test: the tvm*-graph variants are left out"; GRAPH=""; GRAPH24=""
fi
echo "=== bench $(date -u +%T)"
python3 benchmarks/tvm_bench.py run --artifacts .devcache/tvm/artifacts --models "${MODELS:-resnet50}" \
  --batches "${BATCHES:-256,8}" --variants "${VARIANTS:-eager,inductor,sparsec-dense,tvm,${GRAPH}sparsec-24,tvm-24${GRAPH24}}" \
  --repeats "${REPEATS:-5}" --iters "${ITERS:-20}" --out-dir "$OUT" ${BENCH_ARGS} 2>&1 \
  | grep -v DEBUG | tee "$OUT/bench_tvm.log" | grep -vE "FutureWarning|return cls.__new__" | tail -45
echo "=== done $(date -u +%T)"
