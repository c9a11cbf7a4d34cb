"""The benchmark harness runs and reports ratios (their values are measured by ./reproduce.sh bench, not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench", Path(__file__).parent.parent / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_training_benchmark_measures_step_forward_and_floor(tiny_host):
    result = bench.bench_training(tiny_host, repeats=1)
    assert result["train_step_s"] > 0 and result["forward_s"] > 0 and result["floor_s"] > 0
    assert result["ratio"] == pytest.approx(result["train_step_s"] / result["forward_s"])
    assert result["irm_parameters"] > 0


def test_markdown_table_lists_every_benchmark_with_its_target():
    section = {
        "machine": {"device": "cpu, 2 cores", "dtype": "float32", "torch": "2.13.0"},
        "training": {"ratio": 3.0, "train_step_s": 6.0, "forward_s": 2.0, "floor_s": 5.0, "tokens_per_s": 170.0,
                     "host_forward_input_backward_s": 3.5, "irm_forward_backward_s": 1.5},
        "irm": {"ratio": 1.3, "floor_ratio": 1.25, "irm_to_host_parameters": 0.3},
        "capture": {"ratio": 1.01, "bytes_per_token": 34560.0},
        "load": {"warm_s": 0.4, "cold_s": 18.0},
        "end_to_end": {"cpu": {"total_s": 3000, "target_s": 3600, "notebooks_s": {"01_data": 14, "02_train_irm": 1700}}},
    }
    table = bench.markdown_table("cpu-float32", section)
    assert table.count("\n| ") == 2 + 5  # header, rule, five rows
    for target in ("<= 2.5", "<= 1.10", "<= 1.15", "<= 3 s", "<= 60 min"):
        assert target in table
