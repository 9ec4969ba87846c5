# One-command set-up on a fresh machine: `make test` (tests) and `make demo` (main job).
# Everything goes into a local venv; torch is the CPU build unless the venv already has one.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv install test demo bench clean

venv: $(VENV)/.ready
$(VENV)/.ready: requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q $(TORCH_CPU)
	$(VPY) -m pip install -q -r requirements-test.txt
	touch $@

install: venv
	$(VPY) -m pip install -q --no-build-isolation -e .

test: install
	$(VENV)/bin/pytest tests $(PYTEST_ARGS)

demo: install
	$(VPY) -m ceag.demo

bench: install
	$(VPY) bench/run.py

clean:
	rm -rf build $(VENV)
