#!/usr/bin/env bash
# On the GPU machine, from the repo root: build ceag with its CUDA kernels against this
# machine's python3/torch, run the whole test suite, then the GPU benchmarks; results (JSON +
# markdown, device named) go to $OUT (if set) and bench/results/. Every step is time-boxed
# (BUILD_TIMEOUT, TEST_TIMEOUT, BENCH_TIMEOUT seconds) and logged to $OUT/gpu-<step>.log; a
# failed step does not stop the next ones. Prints a summary at the end and exits with the
# status of the first step that failed (0 when all passed). Steps: bench/gpu_steps.sh.
#
#     OUT=/tmp/out bash bench/gpu_check.sh
set -x
PY=${PYTHON:-python3}
RESULTS=bench/results
OUT=${OUT:-$RESULTS}
mkdir -p "$OUT" "$RESULTS"
export PY OUT
source "$(dirname "$0")/gpu_steps.sh"

timeout 30 nvidia-smi || true
timeout 60 "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
timeout 60 "$PY" -c "import pytest, pytest_benchmark, hypothesis" || echo "MISSING test deps (pytest, pytest-benchmark, hypothesis)"

# 1. Build: editable install (scikit-build-core), else CMake directly (PYTHONPATH=the checkout).
export MAX_JOBS=${MAX_JOBS:-16} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
build() {
  "$PY" -m pip install --no-build-isolation --no-deps -e . && return
  echo "pip install -e failed: CMake directly"
  cmake -S . -B build/gpu -G Ninja -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release \
    || cmake -S . -B build/gpu -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release || return
  cmake --build build/gpu -j "$MAX_JOBS" || return
  ls "$PWD"/build/gpu/_C*.so | head -1 > "$OUT/gpu-extension-path.txt"
}
export -f build
rm -f "$OUT/gpu-extension-path.txt"
run_step -q build "${BUILD_TIMEOUT:-600}" build
if [ -s "$OUT/gpu-extension-path.txt" ]; then
  CEAG_EXTENSION_PATH=$(cat "$OUT/gpu-extension-path.txt")
  export CEAG_EXTENSION_PATH PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
run_step env 120 "$PY" -c "import torch, ceag; from ceag._extension import has_cuda_kernels; \
print(torch.cuda.get_device_name(), 'ceag CUDA kernels:', has_cuda_kernels())"

# 2. The whole test suite on the GPU (Triton compiled, CUDA kernels if built).
run_step tests "${TEST_TIMEOUT:-300}" env CEAG_TRITON_AUTOTUNE=0 "$PY" -m pytest tests -q --maxfail=25 -p no:cacheprovider

# 3. GPU benchmarks -> JSON + markdown (partial results are kept when the step fails).
run_step bench "${BENCH_TIMEOUT:-240}" "$PY" -m pytest bench/bench_gpu.py -q -p no:cacheprovider --benchmark-only \
  --benchmark-json="$OUT/gpu-bench.json"
if [ -s "$OUT/gpu-bench.json" ]; then
  run_step report 60 "$PY" bench/report.py "$OUT/gpu-bench.json" \
    && { [ "$OUT" -ef "$RESULTS" ] || cp "$OUT/gpu-bench.json" "$OUT/gpu-bench.md" "$RESULTS/"; }
fi

set +x
echo "================ summary ================"
cat "$OUT/gpu-env.log" 2>/dev/null
[ -n "${CEAG_EXTENSION_PATH:-}" ] && echo "built with CMake: $CEAG_EXTENSION_PATH"
tail -3 "$OUT/gpu-tests.log" 2>/dev/null
[ -s "$OUT/gpu-bench.md" ] && cat "$OUT/gpu-bench.md"
steps_finish
exit "$FIRST_FAILURE"
