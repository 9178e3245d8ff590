#!/bin/bash
# One device call (<= 9 min) for the end-to-end benchmark (issue 5): `sparsec bench` in one of three modes,
# each writing its own tagged results under $OUT (e2e_<gpu>[_TAG].json, its bar chart, and the stages figure
# where benchmarks/results/accuracy_<gpu>.json covers the model) plus one log.
#   MODE=fast     bash benchmarks/e2e_device_run.sh  # GPU tests of the CUDA-graph runtime, then ResNet-50 bs 1,32,256
#                                                     # fp16, every variant, torch.compile default (-> e2e_h100.json),
#                                                     # then benchmarks/e2e_memprobe.py (-> e2e_memprobe.json)
#   MODE=mobile   bash benchmarks/e2e_device_run.sh  # MobileNetV2 + EfficientNet-B0 bs 1,32,256 fp16 (-> _mobile),
#                                                     # then bs256 bf16 (-> _mobile-bf16), then ResNet-50 bs256 fp16
#                                                     # (-> _r50-bs256), torch.compile default
#   MODE=final    bash benchmarks/e2e_device_run.sh  # GPU tests of the hand-written kernels and of the mobile nets'
#                                                     # end to end, benchmarks/stem_conv.py, then MobileNetV2 +
#                                                     # EfficientNet-B0 (-> _mobile-final) and ResNet-50 (-> _r50-final)
#                                                     # at bs256 fp16 against torch.compile's default mode
#   MODE=tune     bash benchmarks/e2e_device_run.sh  # sparsec tune --model on the pruned + 2:4 pipelines of MobileNetV2,
#                                                     # EfficientNet-B0, ResNet-50 (TUNE_MODELS) -> $OUT/sm_90a.json; then
#                                                     # the mobile nets pruned / pruned + 2:4 (measured) (-> _mobile-measured)
#   MODE=autotune bash benchmarks/e2e_device_run.sh  # torch.compile max-autotune beside eager, sparsec-dense,
#                                                     # sparsec-pruned and sparsec-pruned-24, bs256: ResNet-50 (-> _autotune-r50, with
#                                                     # the artifact of `sparsec compile ... --target h100-sparse`), then
#                                                     # MobileNetV2 + EfficientNet-B0 (-> _autotune-mobile), as time allows;
#                                                     # AUTOTUNE=mbv2 or effb0: that model alone (-> _autotune-mbv2/-effb0)
# Every bench run rewrites its JSON after each variant, and each run is stopped by `timeout` so the call ends
# inside BUDGET_S (default 530 s): a run cut short keeps what finished ("complete": false in the JSON).
# Carry: .devcache/cutlass.tar.xz (CUTLASS headers), .devcache/kcache.tar.xz + .devcache/kcache_e2e.tar.xz
# (prebuilt kernels; missing ones are built at first load, in parallel); optional .devcache/kcache_e2e_more.tar.xz
# (the bf16 ResNet-50 and fp16 MobileNetV2/EfficientNet-B0 kernels of SPARSEC_CUTLASS_CONFIGS=compact, built on the CPU)
# and .devcache/inductor_cache.tar.xz (a torch.compile cache from an earlier autotune call: FX graphs and
# autotune choices, so max-autotune compiles the same code without re-benchmarking; the JSON says it was warm).
# Env: MODE, VARIANTS (autotune mode's bench variants), KCACHE_OUT=1 (return the kernels built in this call as $OUT/kcache_built.tar.xz, to carry next time), E2E_TESTS=1 (fast mode: also tests/backends/cutlass/test_e2e_gpu.py; TEST_K, TEST_TIMEOUT), AUTOTUNE (autotune mode: r50,mobile or one of them; a second call with AUTOTUNE=mobile finishes
# what the first left), BUDGET_S, REPEATS, ITERS, PRUNE (default: the largest ratios meeting the accuracy bar in
# benchmarks/results/accuracy_h200.json: resnet50=0.5, mobilenet_v2=0.32, efficientnet_b0=0.32), BENCH_ARGS (extra sparsec bench options), SPARSEC_GIT_COMMIT.
set -o pipefail
START=$(date +%s)
OUT=${OUT:-/tmp/out}
MODE=${MODE:-fast}
BUDGET_S=${BUDGET_S:-$([ "$MODE" = autotune ] && echo 480 || echo 530)}  # autotune: ~1 min left to pack the cache
LOG="$OUT/e2e_${MODE}.log"
mkdir -p "$OUT" /tmp/inductor-cache
. benchmarks/device_setup.sh >"$LOG" 2>&1  # sourced (not piped: its exports must stay in this shell)
cat "$LOG"
[ -f .devcache/inductor_cache.tar.xz ] && tar xJf .devcache/inductor_cache.tar.xz -C /tmp/inductor-cache
export SPARSEC_CUTLASS_CONFIGS=${SPARSEC_CUTLASS_CONFIGS:-compact}
export SPARSEC_GIT_COMMIT=${SPARSEC_GIT_COMMIT:-unknown}

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

bench() {  # bench TAG OPTIONS...: one `sparsec bench` run, stopped when the call's budget runs out
  local tag=$1; shift
  local t; t=$(left)
  if [ "$t" -lt 40 ]; then echo "=== skip $tag: ${t} s left" | tee -a "$LOG"; return; fi
  echo "=== bench $tag $(date -u +%T) (${t} s left)" | tee -a "$LOG"
  timeout --signal=TERM $((t - 15)) python3 benchmarks/e2e.py --out-dir "$OUT" ${tag:+--tag $tag} \
    --prune-ratio "${PRUNE:-resnet50=0.5,mobilenet_v2=0.32,efficientnet_b0=0.32}" --repeats "${REPEATS:-5}" --iters "${ITERS:-20}" \
    --inductor-cache-dir /tmp/inductor-cache "$@" ${BENCH_ARGS} 2>&1 | grep -v DEBUG | tee -a "$LOG" \
    | grep -E " ms \(p90|FAILED|wrote|Error|error:" | cut -c1-230
  [ "${PIPESTATUS[0]}" = 124 ] && echo "=== $tag stopped at the budget (partial JSON kept)" | tee -a "$LOG"
}

case $MODE in
  fast)
    echo "=== tests $(date -u +%T)" | tee -a "$LOG"
    T=tests/backends/test_cuda_graph.py; [ -n "$E2E_TESTS" ] && T="$T tests/backends/cutlass/test_e2e_gpu.py"
    timeout ${TEST_TIMEOUT:-120} python3 -m pytest -m gpu $T -k "${TEST_K:-not nothing}" -q -p no:cacheprovider -rfEs 2>&1 \
      | grep -v DEBUG | tee -a "$LOG" | grep -E "passed|failed|skipped|^FAILED|^ERROR|^E  " | head -20
    bench "" --models resnet50 --batches 1,32,256 --dtypes fp16 --inductor-modes default
    if [ "$(left)" -gt 70 ]; then  # where sparsec-pruned-24's bs1 peak memory goes, step by step
      echo "=== memprobe $(date -u +%T)" | tee -a "$LOG"
      timeout $(( $(left) - 10 )) python3 benchmarks/e2e_memprobe.py --out "$OUT/e2e_memprobe.json" 2>&1 \
        | grep -v DEBUG | tee -a "$LOG" | grep -E " MB|Error"
    fi
    ;;
  mobile)
    bench mobile --models mobilenet_v2,efficientnet_b0 --batches 1,32,256 --dtypes fp16 --inductor-modes default
    bench mobile-bf16 --models mobilenet_v2,efficientnet_b0 --batches 256 --dtypes bf16 --inductor-modes default
    bench r50-bs256 --models resnet50 --batches 256 --dtypes fp16 --inductor-modes default
    ;;
  final)
    echo "=== tests $(date -u +%T)" | tee -a "$LOG"
    timeout ${TEST_TIMEOUT:-240} python3 -m pytest -m gpu tests/backends/cutlass/test_stem.py \
      tests/backends/cutlass/test_squeeze_excite.py tests/backends/cutlass/test_depthwise.py \
      tests/backends/cutlass/test_e2e_gpu.py -k "${TEST_K:-not (test_compiled_cnn and resnet)}" \
      -q -p no:cacheprovider -rfEs 2>&1 | grep -v DEBUG | tee -a "$LOG" \
      | grep -E "passed|failed|skipped|^FAILED|^ERROR|^E  " | head -20
    echo "=== stem_conv $(date -u +%T)" | tee -a "$LOG"
    timeout 60 python3 benchmarks/stem_conv.py --out-dir "$OUT" 2>&1 | grep -v DEBUG | tee -a "$LOG" | tail -5
    bench mobile-final --models mobilenet_v2,efficientnet_b0 --batches 256 --dtypes fp16 --inductor-modes default
    bench r50-final --models resnet50 --batches 256 --dtypes fp16 --inductor-modes default
    ;;
  autotune)
    AUTOTUNE=${AUTOTUNE:-r50,mobile}
    # the cheap variants first: a cut-off run keeps them (VARIANTS=inductor: only warm the inductor cache for a next call)
    V=${VARIANTS:-eager,sparsec-dense,sparsec-pruned,sparsec-pruned-24,inductor}
    for run in ${AUTOTUNE//,/ }; do
      art=()
      case $run in
        r50) models=resnet50
          # the README's command as a user runs it (default configs), timed beside the bench's own variants
          echo "=== sparsec compile resnet50 h100-sparse $(date -u +%T)" | tee -a "$LOG"
          SPARSEC_CUTLASS_CONFIGS=tuned python3 -m sparsec.cli.main compile zoo:torchvision/resnet50 --target h100-sparse \
            --input-shape 256,3,224,224 -o /tmp/r50.sparsec --force 2>&1 | grep -v DEBUG | tee -a "$LOG" | tail -2
          [ -f /tmp/r50.sparsec/manifest.json ] && art=(--artifacts /tmp/r50.sparsec) ;;
        mobile) models=mobilenet_v2,efficientnet_b0 ;;
        mbv2) models=mobilenet_v2 ;;
        effb0) models=efficientnet_b0 ;;
        *) echo "AUTOTUNE takes r50, mobile, mbv2 and effb0, not '$run'" | tee -a "$LOG"; continue ;;
      esac
      bench autotune-$run --models $models --batches 256 --dtypes fp16 --variants $V --inductor-modes max-autotune \
        "${art[@]}"
    done
    # Returned for the next autotune call, if it fits $OUT's 16 MB: the whole cache when small, else only the
    # autotune choices (cache/: written after each op is benchmarked, so a cut-off compile keeps them) and the
    # FX-graph entries; the kernels they name are compiled again from the source those entries hold.
    size=$(du -sm /tmp/inductor-cache | cut -f1)
    parts=.; [ "$size" -ge 100 ] && parts=$(cd /tmp/inductor-cache && ls -d cache fxgraph aotautograd 2>/dev/null)
    if [ -n "$parts" ] && [ -n "$(ls -A /tmp/inductor-cache)" ]; then
      (cd /tmp/inductor-cache && XZ_OPT=-T0 timeout 50 tar cJf /tmp/inductor_cache.tar.xz $parts) \
        || rm -f /tmp/inductor_cache.tar.xz
      if [ -f /tmp/inductor_cache.tar.xz ] && [ "$(stat -c %s /tmp/inductor_cache.tar.xz)" -lt 16000000 ]; then
        cp /tmp/inductor_cache.tar.xz "$OUT/"; echo "=== inductor cache (${size} MB): returned $(echo $parts)" | tee -a "$LOG"
      else echo "=== inductor cache (${size} MB) not returned: over 16 MB compressed or too slow" | tee -a "$LOG"; fi
    else echo "=== inductor cache: ${size} MB, nothing to pack" | tee -a "$LOG"; fi
    ;;
  tune)
    # `sparsec tune --model` on each net's bench pipeline of pruned + 2:4 (cost-model=measured), merged into a copy
    # of the shipped DB (-> $OUT/sm_90a.json, to commit as backends/cutlass/tuned/sm_90a.json); then the mobile
    # nets' pruned variants with the measured cost model reading it (-> _mobile-measured)
    cp backends/cutlass/tuned/sm_90a.json "$OUT/sm_90a.json"
    for mr in ${TUNE_MODELS:-mobilenet_v2=0.32 efficientnet_b0=0.32 resnet50=0.5}; do
      pipe=$(measured_pipeline "${mr#*=}")
      echo "=== tune ${mr%=*} $(date -u +%T) (${pipe})" | tee -a "$LOG"
      COLUMNS=200 timeout $(( $(left) - 200 )) python3 -m sparsec.cli.main tune --model "zoo:torchvision/${mr%=*}" \
        --input-shape 256,3,224,224 --pipeline "$pipe" -o "$OUT/sm_90a.json" 2>&1 | grep -v DEBUG | tee -a "$LOG" \
        | grep -E "^\[|wrote|rror" | tail -4
    done
    mkdir -p "$SPARSEC_CACHE_DIR/tuning" && cp "$OUT/sm_90a.json" "$SPARSEC_CACHE_DIR/tuning/sm_90a.json"
    bench mobile-measured --models mobilenet_v2,efficientnet_b0 --batches 256 --dtypes fp16 \
      --variants sparsec-pruned,sparsec-pruned-24,inductor --inductor-modes default --pruned-cost-model measured
    ;;
  *) echo "MODE must be fast, mobile, final, autotune or tune, not '$MODE'"; exit 2 ;;
esac
[ -n "$KCACHE_OUT" ] && [ -d "$SPARSEC_CACHE_DIR/kernels" ] && pack_kernels "$OUT/kcache_built.tar.xz" | tee -a "$LOG"
echo "=== done $(date -u +%T), $(( $(date +%s) - START )) s" | tee -a "$LOG"
ls "$OUT"
