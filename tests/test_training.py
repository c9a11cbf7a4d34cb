"""Notebook 02's study (irmlib.studies.training): the float32 twin of a bf16 run, and each run's
dominant index's effect."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from irmlib.claims import HELD, NOT_HELD, NOT_TESTED
from irmlib.index_effect import effect_table
from irmlib.profile import AnalysisConfig, load_profile
from irmlib.studies.training import effect_claim, precision_check, precision_claims, run_effects


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
def test_the_dtype_claim_says_why_nothing_was_compared(precision, run_names, reason):
    host = SimpleNamespace(device=torch.device("cpu"))  # nothing is trained: only the device is read
    table = precision_check(host, load_profile("smoke", precision=precision), [], run_names)
    assert table.empty
    claim = precision_claims(table, AnalysisConfig())[0]
    assert claim.verdict == NOT_TESTED and claim.evidence.startswith(reason)


def test_every_run_measures_its_dominant_index_effect(embedded_host, smoke_training):
    from irmlib.residual import norm_gains
    from irmlib.runs import parse_run_name, run_dir

    profile, rows = smoke_training["profile"], smoke_training["rows"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IRM_ROOT", str(smoke_training["root"]))  # read only
        records = run_effects(embedded_host, profile, rows, norm_gains(embedded_host).layer_norm_gain, profile.analysis.effect_rules())
        tracked = {name: int(pd.read_csv(run_dir(profile, *parse_run_name(name)) / "tracking.csv").dominant_index.iloc[-1])
                   for name in records}
    assert set(records) == {f"{e}-seed{s}" for e in profile.emotions for s in profile.seeds}
    for name, record in records.items():
        # The index the run's tracker last named, at the objective's label shift (the paper code's: the token after next).
        assert record["index"] == tracked[name] and record["label_shift"] == profile.train.objective_spec.label_shift
        assert record["moved_to"] != record["index"] and record["verdict"] in ("norm knob (b)", "inert (d)", "neither", "no effect to explain")


def test_the_effect_claim_counts_only_unflagged_runs():
    def record(masked: float) -> dict:
        conditions = {c: {"entropy": 2.0, "index_share": 0.01} for c in ("host", "irm", "only", "masked", "moved")}
        return {"index": 7, "moved_to": 8, "conditions": conditions, "temperature": {"share": 0.5}, "verdict": "neither",
                "shares": {"distribution": {"irm_change": 2.0, "only": 0.5, "masked": masked, "moved": 0.9}}}

    effects = effect_table({"anger-seed0": record(0.1), "anger-seed1": record(0.95)})
    health = pd.DataFrame({"flag": ["ok", "host damaged"]}, index=["anger-seed0", "anger-seed1"])
    claim = effect_claim(effects, health, much=0.5)
    assert claim.verdict == HELD and "Flagged, not counted: anger-seed1." in claim.evidence
    assert effect_claim(effects, health.assign(flag="ok"), much=0.5).verdict == NOT_HELD
    assert effect_claim(effects, health.assign(flag="unstable"), much=0.5).verdict == NOT_TESTED
