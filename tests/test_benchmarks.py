"""The benchmark harness runs and reports ratios (their values are measured by ./reproduce.sh bench, not asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from irmlib.precision import Precision

spec = importlib.util.spec_from_file_location("bench", Path(__file__).parent.parent / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

FP32 = Precision("cpu-float32", "cpu", torch.float32, None, "test")
BF16 = Precision("cpu-bf16-autocast", "cpu", torch.float32, torch.bfloat16, "test")


def test_training_benchmark_measures_step_forward_and_floor_per_precision(tiny_host):
    results = bench.bench_training([(FP32, tiny_host), (BF16, tiny_host)], repeats=1)
    assert set(results) == {"cpu-float32", "cpu-bf16-autocast"}
    for result in results.values():
        assert result["train_step_s"] > 0 and result["forward_s"] > 0 and result["floor_s"] > 0
        assert result["ratio"] == pytest.approx(result["train_step_s"] / result["forward_s"])
        assert result["ratio_to_floor"] == pytest.approx(result["train_step_s"] / result["floor_s"])
        assert result["irm_parameters"] > 0 and result["irm_grad_dtype"] == "float32"


def test_train_step_under_bf16_autocast_keeps_fp32_irm_and_adam_state(tiny_host):
    irm = bench.random_irm(tiny_host)
    ids = torch.randint(3, tiny_host.vocab_size, (2, 16))
    step = bench.make_train_step(tiny_host, irm, ids, BF16)
    before = [p.detach().clone() for p in irm.parameters()]
    step()
    assert all(p.dtype is torch.float32 for p in irm.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, irm.parameters()))


def test_machine_key_names_cpu_flags_cores_and_torch():
    machine = bench.machine_info(torch.device("cpu"))
    key = bench.machine_key(machine)
    assert machine["cpu_model"] in key and f"{machine['cores']} cores" in key and torch.__version__ in key
    precisions, chosen = bench.precisions_to_run(torch.device("cpu"), "float32")
    assert [p.name for p in precisions] == ["cpu-float32"] and chosen.name == "cpu-float32"


def test_precisions_to_run_adds_the_chosen_one(monkeypatch):
    from irmlib import precision as P

    precisions, chosen = bench.precisions_to_run(torch.device("cpu"), "bfloat16")
    assert [p.name for p in precisions] == ["cpu-float32", "cpu-bf16-autocast"]
    assert chosen is precisions[1]
    # "auto" on a CPU without bf16 flags: float32 alone, timed once.
    clear = getattr(P._choose_cpu, "cache_clear", lambda: None)
    monkeypatch.delenv("IRM_PRECISION", raising=False)
    monkeypatch.setattr(P, "cpu_bf16_support", lambda: {"model_name": "Test CPU", "machine": "x86_64", "flags": ["avx2"], "flags_known": True,
                                                        "native_bf16_flags": [], "native_bf16": False, "torch_cpu_capability": "AVX2"})
    clear()
    try:
        precisions, chosen = bench.precisions_to_run(torch.device("cpu"))
    finally:
        clear()
    assert [p.name for p in precisions] == ["cpu-float32"] and chosen.name == "cpu-float32"


def section(with_bf16: bool) -> dict:
    training = {"ratio": 3.0, "train_step_s": 6.0, "forward_s": 2.0, "floor_s": 5.8, "tokens_per_s": 170.0, "ratio_to_floor": 1.03,
                "host_forward_input_backward_s": 4.4, "irm_forward_backward_s": 1.4}
    generation = {"irm": {"ratio": 1.3, "ratio_to_floor": 1.02, "floor_ratio": 1.27, "irm_to_host_parameters": 0.3,
                          "prompt_tokens_padded": 40, "irm_calls": 64, "irm_s": 8.0, "plain_s": 6.2},
                  "capture": {"ratio": 1.01, "bytes_per_token": 34560.0}}
    names = ["cpu-float32"] + (["cpu-bf16-autocast"] if with_bf16 else [])
    chosen = names[-1]
    result = {
        "machine": {"device": "cpu, 2 cores, 2 threads", "cpu_model": "AMD EPYC", "cpu_native_bf16_flags": ["avx512_bf16"] if with_bf16 else [],
                    "torch": "2.13.0"},
        "precisions": {n: {"training": training} for n in names},
        "generation": {"cpu-float32": generation},  # cpu-bf16-autocast generates in float32
        "load": {"warm_s": 0.4, "cold_s": 18.0, "target_warm_s": 3.0},
        "end_to_end": {"cpu": {"total_s": 3000, "target_s": 5400, "notebooks_s": {"01_data": 14, "02_train_irm": 1700},
                               "peak_rss_mb": {"01_data": 900.0, "02_train_irm": 3100.0}, "max_peak_rss_mb": 3100.0,
                               "target_peak_rss_mb": 6144}},
    }
    if with_bf16:
        result["bf16_vs_fp32"] = {"chosen": chosen, "reason": "CPU has avx512_bf16; probe: bf16 matmul 0.36x fp32", "target": 0.6,
                                  "train_step_ratio": 0.55, "generation": "cpu-bf16-autocast generates in float32"}
    else:
        result["bf16_vs_fp32"] = {"chosen": chosen, "reason": "CPU reports no avx512_bf16 or amx_bf16 flag", "target": 0.6}
    return result


def test_markdown_table_lists_every_benchmark_and_precision_with_its_target():
    table = bench.markdown_table("cpu: AMD EPYC | avx512_bf16 | 2 cores | torch 2.13.0", section(with_bf16=True))
    # header, rule; train for 2 precisions; generation, capture once (bf16 generates in fp32); bf16/fp32; load; end to end; peak memory
    assert table.count("\n| ") == 2 + 2 + 2 + 1 + 1 + 1 + 1
    for target in ("<= 1.05", "<= 1.15", "<= 0.6", "<= 3 s", "<= 90 min", "<= 6 GB"):
        assert target in table
    assert "cpu-bf16-autocast" in table and "3.03 GB" in table and "generates in float32" in table


def test_markdown_table_says_why_bf16_was_not_chosen():
    table = bench.markdown_table("cpu: X", section(with_bf16=False))
    assert "bf16 not chosen: CPU reports no avx512_bf16 or amx_bf16 flag" in table


def test_generation_is_timed_once_per_generation_path():
    # cpu-bf16-autocast generates exactly as cpu-float32 does (no autocast for one-token steps).
    assert bench.generation_path(FP32) == bench.generation_path(BF16)
    cuda_bf16 = Precision("cuda-bfloat16", "cuda", torch.bfloat16, None, "test")
    assert bench.generation_path(cuda_bf16) != bench.generation_path(Precision("cuda-float32", "cuda", torch.float32, None, "test"))


def test_an_unfinished_pipeline_run_is_reported_incomplete():
    result = section(with_bf16=True)
    result["end_to_end"]["cpu"]["missing"] = ["03_sample_generations"]
    table = bench.markdown_table("cpu: X", result)
    assert "| 6. end to end, cpu profile | incomplete | <= 90 min | finished so far (min) 01: 0.2, 02: 28.3; not run yet: 03_sample_generations |" in table


LOG = """run 20261129T142250 at commit ff23038 (clean); precision bfloat16: CPU has amx_bf16
[01_data] running (cpu profile) -> runs/cpu/notebooks/01_data.ipynb
[01_data] done in 12 s, kernel peak memory (RSS) 607 MB
[02_train_irm] done in 1195 s, kernel peak memory (RSS) 3059 MB (reached in cell 9: summaries = train_profile_runs(host, config, rows))
"""


def test_end_to_end_row_read_from_a_pipeline_log():
    row = bench.end_to_end_from_log(LOG, "cpu", bf16=True)
    assert row["notebooks_s"] == {"01_data": 12.0, "02_train_irm": 1195.0} and row["total_s"] == 1207.0
    assert row["max_peak_rss_mb"] == 3059.0 and row["target_s"] == 7200
    assert row["peak_rss_cell"] == {"02_train_irm": "cell 9: summaries = train_profile_runs(host, config, rows)"}
    result = section(with_bf16=True)
    result["end_to_end"]["cpu"] = row
    assert "02's peak in cell 9: summaries" in bench.markdown_table("cpu: X", result)
    assert "03_sample_generations" in row["missing"] and "ff23038" in row["source"]
    with pytest.raises(ValueError, match="No .* line in the pipeline log"):
        bench.end_to_end_from_log("nothing here", "cpu", bf16=True)


def test_the_float32_check_of_the_committed_run_is_read_and_tabled(tmp_path, monkeypatch):
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    assert bench.precision_check_from_metrics("cpu") is None
    metrics = {"run": {"run": "20261130T000000", "commit": "abc1234"},
               "02_precision_check": {"anger-seed0": {"best_val_loss": 4.49, "best_val_loss float32": 4.50, "relative_difference": 0.0022,
                                                      "dominant_index": 412, "dominant_index float32": 413}}}
    (tmp_path / "figures" / "cpu").mkdir(parents=True)
    (tmp_path / "figures" / "cpu" / "metrics.json").write_text(__import__("json").dumps(metrics))
    check = bench.precision_check_from_metrics("cpu")
    assert check["source"] == "figures/cpu/metrics.json of run 20261130T000000 at commit abc1234"
    table = bench.markdown_table("cpu: X", section(with_bf16=True) | {"precision_check": check})
    assert "| 8. bf16 vs float32 training, cpu profile, anger-seed0 | 0.0022 | same findings |" in table
    assert "dominant index 412 vs 413 (differs)" in table


def test_the_float32_check_runs_the_profiles_precision_check_runs(monkeypatch):
    import pandas as pd

    import irmlib.data
    import irmlib.studies.training as training

    asked = {}

    def fake_check(host, profile, rows, run_names):
        asked.update(host=host, profile=profile.name, run_names=run_names)
        return pd.DataFrame({"anger-seed0": {"precision": "cpu-bf16-autocast", "best_val_loss": 4.0, "best_val_loss float32": 4.02,
                                             "relative_difference": 0.005, "dominant_index": 7, "dominant_index float32": 7}}).T

    monkeypatch.setattr(training, "precision_check", fake_check)
    monkeypatch.setattr(irmlib.data, "profile_rows", lambda profile: [])
    monkeypatch.setattr(bench, "load_host", lambda name: "host")
    check = bench.run_precision_check("cpu")
    assert asked == {"host": "host", "profile": "cpu", "run_names": ("anger-seed0", "sadness-seed0")}
    assert check["runs"]["anger-seed0"]["relative_difference"] == 0.005 and "held" in check["claims"][0]
    table = bench.markdown_table("cpu: X", section(with_bf16=True) | {"precision_check": check})
    assert "| 8. bf16 vs float32 training, cpu profile, anger-seed0 | 0.0050 | same findings |" in table
