#!/usr/bin/env bash
# On a GPU machine, from the repository root: build the kernel, run the GPU tests,
# compute-sanitizer (memcheck, racecheck) on small launches, and the benchmark.
#   bash scripts/device_check.sh [pytest -k expression] [benchmark --only filter]
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fx_fuse_check}
mkdir -p "$OUT"
export FX_FUSE_CACHE_DIR=${FX_FUSE_CACHE_DIR:-/tmp/fx_fuse_cache}
KEXPR=${1:-}
BENCH_ONLY=${2:-}
cd "$(dirname "$0")/.."
{
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 - <<'PY'
import time
t = time.perf_counter()
import fx_fuse._build as b
m = b.load()
print(f"first-use build + load: {time.perf_counter() - t:.1f} s")
PY
python3 -c "import time; t=time.perf_counter(); import fx_fuse._build as b; b.load(); print(f'cached load: {time.perf_counter()-t:.2f} s (incl. import torch)')"
cp "$FX_FUSE_CACHE_DIR"/*/build.log "$OUT/build.log" 2>/dev/null
grep -E "spill|registers" "$OUT/build.log" | paste - - | awk '{print $5, $6, $10, $11, $16}' | sort | uniq -c
} 2>&1 | tee "$OUT/build_summary.log"

python3 -m pytest -q -p no:cacheprovider tests/test_kernel_cuda.py ${KEXPR:+-k "$KEXPR"} 2>&1 \
  | tee "$OUT/tests.log" | tail -25

for tool in memcheck racecheck; do
  compute-sanitizer --tool $tool --kernel-name kns=conv_ python3 scripts/sanitize_cases.py \
    > "$OUT/sanitizer_$tool.log" 2>&1
  echo "sanitizer $tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1)"
done

python3 benchmarks/bench_conv.py ${BENCH_ONLY:+--only "$BENCH_ONLY"} 2>&1 | tee "$OUT/bench.log" \
  | grep -v "^\[" | tail -30
