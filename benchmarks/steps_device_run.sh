#!/bin/bash
# One device call (<= 9 min) made of the steps named in STEPS (in the order given), for work between the big runs
# of e2e_device_run.sh:
#   STEPS="tests dwconv profile tune" bash benchmarks/steps_device_run.sh
# tests    GPU tests: TESTS (files) filtered by TEST_K (pytest -k);
# dwconv   benchmarks/dwconv.py --variants ${DW_VARIANTS:-rows} --write-table on MobileNetV2 and EfficientNet-B0
#          at bs256 fp16 -> $OUT/dwconv_<gpu>.json and $OUT/dw_sm_90a.json (also used by the later steps);
# profile  benchmarks/e2e_profile.py on ${PROFILE_MODEL:-resnet50} at ${PROFILE_BATCH:-1} for PROFILE_VARIANTS
#          -> $OUT/prof_<model>_bs<batch>.json;
# bench    benchmarks/e2e.py --tag BENCH_TAG $BENCH_ARGS (-> $OUT/e2e_<gpu>_<tag>.json and plots), with the
#          inductor cache of .devcache/inductor_cache.tar.xz when carried; BENCH2_TAG/BENCH2_ARGS: a second run,
#          with BENCH2_ENV (e.g. SPARSEC_CUTLASS_PDL=0) in its environment;
# convpool benchmarks/conv_pool.py --tiles ${CP_TILES:-chosen} over CP_DTYPES, CP_BATCHES -> $OUT/conv_pool_<gpu>.json,
#          installed as the shipped conv_pool_sm_90a.json of the later steps' pipelines;
# tune     `sparsec tune --model` on ResNet-50's pruned 0.5 + 2:4 pipeline (cost-model=measured) at bs1, merged
#          into a copy of the shipped DB -> $OUT/sm_90a.json (also used by the later steps).
# Carry .devcache/cutlass.tar.xz and kernel caches as e2e_device_run.sh does. KCACHE_OUT=1 returns built kernels.
# SPARSEC_GIT_COMMIT: give the commit as text from this checkout; `git rev-parse HEAD` run on the device machine
# names the landed commit its copy of the tree sits on, not local commits.
set -o pipefail
START=$(date +%s)
OUT=${OUT:-/tmp/out}
LOG="$OUT/steps.log"
mkdir -p "$OUT"
. benchmarks/device_setup.sh >"$LOG" 2>&1
cat "$LOG"
export SPARSEC_CUTLASS_CONFIGS=${SPARSEC_CUTLASS_CONFIGS:-tuned} SPARSEC_GIT_COMMIT=${SPARSEC_GIT_COMMIT:-unknown}
BUDGET_S=${BUDGET_S:-540}
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
step() { echo "=== $1 $(date -u +%T) ($(left) s left)" | tee -a "$LOG"; }
quiet() { grep -v -E "DEBUG|FutureWarning|return cls.__new__|UserWarning|complete_tensor|tensor = torch.frombuffer|_warn_once" | tee -a "$LOG"; }
mkdir -p "$SPARSEC_CACHE_DIR/tuning"

for s in ${STEPS:-tests profile}; do
  case $s in
    tests)
      step tests
      timeout $(( $(left) - ${TESTS_LEAVE:-60} )) python3 -m pytest -m gpu ${TESTS:-tests/backends/test_cuda_graph.py} \
        -k "${TEST_K:-not nothing}" -q -p no:cacheprovider -rfEs 2>&1 | quiet \
        | grep -E "passed|failed|skipped|^FAILED|^ERROR|^E  " | head -30 ;;
    dwconv)
      step dwconv
      timeout $(( $(left) - 30 )) python3 benchmarks/dwconv.py --variants "${DW_VARIANTS:-rows}" \
        --write-table "$OUT/dw_sm_90a.json" 2>&1 | quiet | grep -E "total|choices|wrote|rror" | cut -c1-400
      cp benchmarks/results/dwconv_*.json "$OUT/" 2>/dev/null
      [ -f "$OUT/dw_sm_90a.json" ] && cp "$OUT/dw_sm_90a.json" "$SPARSEC_CACHE_DIR/tuning/" ;;
    profile)
      step "profile ${PROFILE_MODEL:-resnet50} bs${PROFILE_BATCH:-1}"
      timeout $(( $(left) - 20 )) python3 benchmarks/e2e_profile.py --model ${PROFILE_MODEL:-resnet50} \
        --batch ${PROFILE_BATCH:-1} --prune-ratio ${PRUNE:-0.5} --iters 20 \
        --variants ${PROFILE_VARIANTS:-sparsec-pruned,sparsec-pruned-24} \
        --out "$OUT/prof_${PROFILE_MODEL:-resnet50}_bs${PROFILE_BATCH:-1}.json" 2>&1 | quiet | cut -c1-160 ;;
    bench)
      mkdir -p /tmp/inductor-cache
      [ -f .devcache/inductor_cache.tar.xz ] && tar xJf .devcache/inductor_cache.tar.xz -C /tmp/inductor-cache
      for b in "$BENCH_TAG||$BENCH_ARGS" "$BENCH2_TAG|$BENCH2_ENV|$BENCH2_ARGS"; do
        tag=${b%%|*}; rest=${b#*|}; envs=${rest%%|*}; [ -z "$tag" ] && continue
        step "bench $tag ${envs}"
        env $envs timeout --signal=TERM $(( $(left) - 15 )) python3 benchmarks/e2e.py --out-dir "$OUT" --tag "$tag" \
          --inductor-cache-dir /tmp/inductor-cache ${rest#*|} 2>&1 | quiet | grep -E " ms \(p90|FAILED|wrote|Error|error:" | cut -c1-230
      done ;;
    convpool)
      step convpool
      timeout $(( $(left) - 30 )) python3 benchmarks/conv_pool.py --dtypes ${CP_DTYPES:-fp16,bf16} --tiles ${CP_TILES:-chosen} \
        --batches ${CP_BATCHES:-1,2,4,8,16,32,64,128,256} 2>&1 | quiet | grep -E "bs|wrote|rror" | cut -c1-260
      cp benchmarks/results/conv_pool_*.json "$OUT/" 2>/dev/null
      for f in benchmarks/results/conv_pool_*.json; do
        [ -f "$f" ] && cp "$f" /tmp/site/sparsec/backends/cutlass/tuned/conv_pool_sm_90a.json
      done ;;
    tune)
      step tune
      cp backends/cutlass/tuned/sm_90a.json "$OUT/sm_90a.json"
      pipe=$(measured_pipeline 0.5)
      COLUMNS=200 timeout $(( $(left) - 60 )) python3 -m sparsec.cli.main tune --model zoo:torchvision/resnet50 \
        --input-shape 1,3,224,224 --pipeline "$pipe" -o "$OUT/sm_90a.json" 2>&1 | quiet | grep -E "^\[|wrote|rror" | cut -c1-200
      cp "$OUT/sm_90a.json" "$SPARSEC_CACHE_DIR/tuning/sm_90a.json" ;;
    *) echo "unknown step '$s' (tests, dwconv, profile, bench, convpool, tune)" | tee -a "$LOG" ;;
  esac
done
[ -n "$KCACHE_OUT" ] && [ -d "$SPARSEC_CACHE_DIR/kernels" ] && pack_kernels "$OUT/kcache_built.tar.xz" | tee -a "$LOG"
step done
ls "$OUT"
