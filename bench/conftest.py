"""Benchmark set-up: record torch's version and the device beside pytest-benchmark's machine info."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Benchmarks share helpers by module name (bench_compact_linear imports bench_masked_linear).
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch_version"] = torch.__version__
    machine_info["num_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name()
