#!/bin/bash
# One device call for the CUTLASS backend: unpack the carried CUTLASS headers, build every
# kernel in parallel, check SASS, run the gpu tests, tune and benchmark.
#   STAGES="build sass test tune bench" bash benchmarks/gemm_device_run.sh
# Carry: .devcache/cutlass.tar.xz (the headers of the nvidia-cutlass wheel).
set -o pipefail
. benchmarks/device_setup.sh
STAGES=${STAGES:-"build sass test"}
SUITE=${SUITE:-quick}
DTYPES=${DTYPES:-fp16,bf16}
nvcc --version | tail -2
for stage in $STAGES; do
  echo "=== $stage $(date -u +%T)"
  case $stage in
    build) python3 -c "
import time
from sparsec.backends.cutlass import build
from sparsec.backends.cutlass.config import KernelConfig, candidates
import sys
sys.path.insert(0, 'tests/backends/cutlass')
base = KernelConfig()
items = [c for dt in ('fp16', 'bf16') for sp in (True, False) for c in candidates('sm_90a', dt, sp)]
from test_gpu import EPILOGUES, SM80
items += EPILOGUES + [build.compressor_source(d, t) for d, t in (('fp16', 128), ('bf16', 128), ('fp16', 64))]
items += [c.base() if c.sparse else c for c in SM80] + [c for dt in ('fp16', 'bf16') for sp in (True, False) for c in candidates('sm_80', dt, sp)]
t = time.time()
try:
    build.build(items, progress=True)
finally:
    print(f'built {len(items)} items in {time.time() - t:.0f} s')
" ;;
    sass) for n in sm90a_fp16_sp_t128x128x128_c1x2_coop_identity sm90a_fp16_sp_t256x128x128_c2x1_coop_identity sm90a_fp16_dn_t128x256x64_c1x2_coop_identity; do
            lib=$(ls -d $SPARSEC_CACHE_DIR/kernels/$n-*/kernel.so | head -1)
            echo "$n: $(cuobjdump --dump-sass $lib | grep -o 'HGMMA[.A-Z0-9x_]*' | sort | uniq -c | tr '\n' ' ')"
          done ;;
    test) python3 -m pytest -m gpu tests/backends/cutlass -q -p no:cacheprovider -rfEs > "$OUT/pytest.log" 2>&1
          grep -E "passed|failed|^FAILED|^ERROR|^SKIPPED|^E  " "$OUT/pytest.log" | grep -v DEBUG | head -60 ;;
    pack) pack_kernels "$OUT/kcache.tar.xz" ;;
    tune) python3 -c "from sparsec.cli.main import main; main()" tune ${TUNE_ARGS:---suite $SUITE --dtype $DTYPES} -o "$OUT/${TUNE_ARCH:-sm_90a}.json" 2>&1 | tail -300 ;;
    bench) python3 benchmarks/gemm_2to4.py --suite "$SUITE" --dtypes "$DTYPES" ${SKIP:+--skip-suites $SKIP} \
             ${BENCH_ARGS} --out-dir "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -60 ;;
  esac
done
echo "=== done $(date -u +%T)"
