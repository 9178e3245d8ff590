# Sourced by the benchmarks/*_device_run.sh scripts: what each of them needs first on a bare device machine.
#   . benchmarks/device_setup.sh
# Installs sparsec into /tmp/site (afresh: a warm machine keeps the last call's copy): a real (non-editable) install, and no cwd on sys.path, since the repo's
# top-level sparsec/ would otherwise shadow the package-dir mapping (sparsec.backends lives in backends/).
# Unpacks whichever carried CUTLASS headers (.devcache/cutlass.tar.xz) and kernel caches
# (.devcache/kcache*.tar.xz) the call brought, prints the GPU, and exports the environment they need.
OUT=${OUT:-/tmp/out}
export SPARSEC_CACHE_DIR=${SPARSEC_CACHE_DIR:-/tmp/sparsec-cache}
mkdir -p "$OUT" /tmp/cutlass "$SPARSEC_CACHE_DIR"
[ -f .devcache/cutlass.tar.xz ] && tar xJf .devcache/cutlass.tar.xz -C /tmp/cutlass
for k in .devcache/kcache*.tar.xz; do [ -f "$k" ] && tar xJf "$k" -C "$SPARSEC_CACHE_DIR"; done
rm -rf /tmp/site; pip install -q --no-deps --no-build-isolation --target /tmp/site . >/dev/null 2>&1 || echo "pip install failed"
export PYTHONPATH=/tmp/site PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 SPARSEC_CUTLASS_DIR=/tmp/cutlass/source
measured_pipeline() {  # measured_pipeline RATIO: h100-sparse's pipeline, pruned at RATIO, 2:4 by the tuning DB
  python3 -c "import sys; from sparsec.api import resolve_target as t, resolve_backend as b
from sparsec.backends.bench import sparsec_pipeline as p; g = t('h100-sparse')
print(p(b(g).pipeline(g), prune_ratio=float(sys.argv[1]), cost_model='measured'))" "$1"
}
pack_kernels() {  # pack_kernels DEST.tar.xz: the kernels built so far, to carry in .devcache/ next time
  (cd "$SPARSEC_CACHE_DIR" && XZ_OPT=-T0 timeout 60 tar cJf "$1" --exclude='*.lock' --exclude='build.log' kernels) \
    && ls -la "$1"
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
