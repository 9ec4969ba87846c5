#!/usr/bin/env bash
# On the GPU machine, from the repo root: build ceag with its CUDA kernels against this
# machine's python3/torch, run the whole test suite, then the GPU benchmarks; results (JSON +
# markdown, device named) go to $OUT (if set) and bench/results/. Keeps going past failures
# and prints a summary at the end.
#
#     OUT=/tmp/out bash bench/gpu_check.sh
set -x
PY=${PYTHON:-python3}
RESULTS=bench/results
OUT=${OUT:-$RESULTS}
mkdir -p "$OUT" "$RESULTS"
declare -A STATUS

nvidia-smi || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
"$PY" -c "import pytest, pytest_benchmark, hypothesis" || echo "MISSING test deps (pytest, pytest-benchmark, hypothesis)"

# 1. Build: editable install (scikit-build-core), else CMake directly (PYTHONPATH=the checkout).
export MAX_JOBS=${MAX_JOBS:-16} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
if "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/gpu-build.log" 2>&1; then
  STATUS[build]="ok (pip -e)"
else
  tail -30 "$OUT/gpu-build.log"
  cmake -S . -B build/gpu -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release \
    >> "$OUT/gpu-build.log" 2>&1 || cmake -S . -B build/gpu -DPython_EXECUTABLE="$(command -v "$PY")" \
    -DCMAKE_BUILD_TYPE=Release >> "$OUT/gpu-build.log" 2>&1
  if cmake --build build/gpu -j "$MAX_JOBS" >> "$OUT/gpu-build.log" 2>&1; then
    CEAG_EXTENSION_PATH=$(ls "$PWD"/build/gpu/_C*.so | head -1)
    export CEAG_EXTENSION_PATH PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    STATUS[build]="ok (cmake, $CEAG_EXTENSION_PATH)"
  else
    tail -30 "$OUT/gpu-build.log"
    STATUS[build]="FAILED (see $OUT/gpu-build.log)"
  fi
fi
"$PY" -c "import torch, ceag; from ceag._extension import has_cuda_kernels; \
print(torch.cuda.get_device_name(), 'ceag CUDA kernels:', has_cuda_kernels())" 2>&1 | tee "$OUT/gpu-env.txt"

# 2. The whole test suite on the GPU (Triton compiled, CUDA kernels if built).
CEAG_TRITON_AUTOTUNE=0 timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest tests -q --maxfail=25 -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
STATUS[tests]=$([ "${PIPESTATUS[0]}" = 0 ] && echo ok || echo FAILED)

# 3. GPU benchmarks -> JSON + markdown.
timeout "${BENCH_TIMEOUT:-240}" "$PY" -m pytest bench/bench_gpu.py -q -p no:cacheprovider --benchmark-only \
  --benchmark-json="$OUT/gpu-bench.json" 2>&1 | tee "$OUT/gpu-bench.log"
STATUS[bench]=$([ "${PIPESTATUS[0]}" = 0 ] && echo ok || echo "FAILED (partial results kept)")
if [ -s "$OUT/gpu-bench.json" ]; then
  "$PY" bench/report.py "$OUT/gpu-bench.json"
  [ "$OUT" -ef "$RESULTS" ] || cp "$OUT/gpu-bench.json" "$OUT/gpu-bench.md" "$RESULTS/"
fi

set +x
echo "================ summary ================"
cat "$OUT/gpu-env.txt" 2>/dev/null
for step in build tests bench; do printf '%-6s %s\n' "$step" "${STATUS[$step]}"; done
tail -3 "$OUT/gpu-tests.log" 2>/dev/null
[ -s "$OUT/gpu-bench.md" ] && cat "$OUT/gpu-bench.md"
true
