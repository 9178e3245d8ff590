#!/bin/bash
# One device call of the accuracy benchmark (issue 6): install sparsec, then benchmarks/accuracy/run.py.
#   SPARSEC_GIT_COMMIT=<sha> JOBS=resnet50:0 EXTRA=0.4,0.5 STAGES=lat bash benchmarks/accuracy_device_run.sh
#   SPARSEC_GIT_COMMIT=<sha> PROCS="resnet50:0 resnet50:1 mobilenet_v2:0" STAGES=lat bash benchmarks/accuracy_device_run.sh
# Env: JOBS (model:seed,... run in one process, in order) or PROCS (space-separated job lists, one process
# each, run concurrently: training at 64 px is launch-bound, so several processes share the GPU well;
# under CUDA MPS where nvidia-cuda-mps-control exists). PROCS runs time no stage (--no-latency: their
# timings would be wrong); with STAGES=lat the latency tables are measured first, alone (--luts-only).
# EXTRA (--extra-ratios: "0.4,0.5" or "resnet50=0.4,0.5;mobilenet_v2=0.2,0.25"), STAGES (--stages: "lat"
# or empty), EXPECT (--expect-s, e.g. "resnet50=360,mobilenet_v2=240"), BUDGET (--budget-s, default 480),
# RATIOS (base ratio candidates), ARGS (anything else), PROC_TIMEOUT (s, default 520: each PROCS process is
# killed then, keeping the stages it finished, so that the call ends in time).
# Carry: .devcache/fashion-mnist (the four IDX .gz files). Latency tables found in benchmarks/luts/
# (lut_<model>_<gpu>_64px_b256.json) are reused; ones measured here go to $OUT/luts/: copy them into
# benchmarks/luts/ so that later calls skip the measurement.
# $OUT gets: accuracy.log, accuracy_run_<gpu>_<models>.json (rewritten after every stage), luts/*.json;
# with PROCS, runs.tar.gz holding p<i>/ (each process's log and run JSON) instead.
set -o pipefail
. benchmarks/device_setup.sh
echo "=== accuracy $(date -u +%T) commit ${SPARSEC_GIT_COMMIT:-unset}"
RUN=(python3 benchmarks/accuracy/run.py --data .devcache/fashion-mnist --ratios "${RATIOS:-0.3,0.32,0.35,0.4}"
     --budget-s "${BUDGET:-480}" --extra-ratios "${EXTRA:-}" --stages "${STAGES:-}" --expect-s "${EXPECT:-}")
quiet() { grep -v -e "FutureWarning: \`isinstance(treespec" -e "return cls.__new__"; }
if [ -z "${PROCS:-}" ]; then
  "${RUN[@]}" --jobs "${JOBS:?set JOBS or PROCS, e.g. resnet50:0}" --out "$OUT" ${ARGS} 2>&1 | quiet \
    | tee "$OUT/accuracy.log" | grep -v "sparsec.finetune: step"
else
  if [ -n "${STAGES:-}" ]; then
    models=$(tr ' ,' '\n\n' <<<"$PROCS" | cut -d: -f1 | sort -u | paste -sd,)
    "${RUN[@]}" --luts-only --models "$models" --out "$OUT" 2>&1 | quiet | tee "$OUT/luts.log"
  fi
  if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then echo "MPS on"; fi
  i=0
  for jobs in $PROCS; do
    i=$((i + 1)); mkdir -p "$OUT/p$i"
    (timeout "${PROC_TIMEOUT:-520}" "${RUN[@]}" --jobs "$jobs" --no-latency --lut-dir "$OUT/luts" --out "$OUT/p$i" ${ARGS} 2>&1 | quiet \
      > "$OUT/p$i/accuracy.log") &
  done
  wait
  echo quit | nvidia-cuda-mps-control 2>/dev/null
  for d in "$OUT"/p*/; do echo "--- $d"; grep -v "sparsec.finetune: step" "$d/accuracy.log" | tail -25; done
  (cd "$OUT" && tar czf runs.tar.gz p*/ luts/ 2>/dev/null && rm -rf p*/)
fi
echo "=== done $(date -u +%T)"
