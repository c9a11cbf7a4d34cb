"""Notebook 02's study (irmlib.studies.training): the float32 twin of a bf16 run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from irmlib.claims import NOT_TESTED
from irmlib.profile import AnalysisConfig, load_profile
from irmlib.studies.training import claims, precision_check


@pytest.mark.slow
def test_precision_check_trains_a_float32_twin_and_compares(embedded_host, tmp_path, monkeypatch):
    from irmlib.data import load_alignment
    from irmlib.runs import run_dir

    rows = load_alignment()
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))  # the runs go to tmp_path/runs
    # bf16 (emulated where the CPU lacks it, and slow there): one step on a few short rows is enough to compare.
    profile = load_profile("smoke", precision="bfloat16", max_steps=1, injected_layers=[0, 29], track_every=1, data_limit=2,
                           max_length=16, batch_size=2)
    table = precision_check(embedded_host, profile, rows, ("anger-seed0",))
    assert table.index.tolist() == ["anger-seed0"]
    row = table.loc["anger-seed0"]
    own = json.loads((run_dir(profile, "anger", 0) / "done.json").read_text())
    twin_dir = tmp_path / "runs" / "smoke" / "irm" / "anger-seed0-float32"
    twin = json.loads((twin_dir / "done.json").read_text())
    # Each column reads its own run: the profile's bf16 run and the float32 twin beside it.
    assert row["precision"] == own["precision"] == "cpu-bf16-autocast"
    assert row["float32 precision"] == twin["precision"] == "cpu-float32"
    assert row.best_val_loss == own["best_val_loss"] and row["best_val_loss float32"] == twin["best_val_loss"]
    assert row.relative_difference >= 0 and (row.relative_difference == 0) == (own["best_val_loss"] == twin["best_val_loss"])
    for column, directory in (("dominant_index", run_dir(profile, "anger", 0)), ("dominant_index float32", twin_dir)):
        assert isinstance(row[column], int) and row[column] == int(pd.read_csv(directory / "tracking.csv").dominant_index.iloc[-1])
    # A profile that trains in float32 already has nothing to compare.
    assert precision_check(embedded_host, load_profile("smoke", precision="float32"), rows, ("anger-seed0",)).empty


@pytest.mark.parametrize("precision, run_names, reason", [("float32", ("anger-seed0",), "This machine trains in float32 already"),
                                                          ("bfloat16", (), "No runs named in precision_check")])
def test_claim_2_says_why_nothing_was_compared(precision, run_names, reason):
    host = SimpleNamespace(device=torch.device("cpu"))  # nothing is trained: only the device is read
    table = precision_check(host, load_profile("smoke", precision=precision), [], run_names)
    assert table.empty
    claim = claims({"anger-seed0": {"initial_val_loss": 10.0, "best_val_loss": 4.0}}, table, AnalysisConfig())[1]
    assert claim.verdict == NOT_TESTED and claim.evidence.startswith(reason)
