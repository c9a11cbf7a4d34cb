"""A profile's runs (irmlib.profile_runs): what notebooks 03-06 call when notebook 02 has not run,
and `./reproduce.sh train`, alone or under accelerate launch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_trained_irms_trains_missing_runs_as_02_does_then_loads_them(embedded_host, smoke_training, smoke_root, capsys):
    from irmlib.irm import IRM
    from irmlib.profile_runs import trained_irms
    from irmlib.runs import run_dir

    # The session's smoke training came from trained_irms on an empty runs/: it said so and trained 02's runs.
    assert "Notebook 02's IRMs anger-seed0, sadness-seed0 are not trained yet" in smoke_training["printed"]
    profile = smoke_training["profile"]
    for name in ("anger", "sadness"):
        done = json.loads((run_dir(profile, name, 0) / "done.json").read_text())
        assert done["steps"] == profile.train.max_steps and (run_dir(profile, name, 0) / "tracking.csv").exists()
    # Finished runs are loaded, not trained again.
    irms = trained_irms(embedded_host, profile)
    assert "not trained yet" not in capsys.readouterr().out
    assert sorted(irms) == ["anger-seed0", "sadness-seed0"] and all(isinstance(irm, IRM) and not irm.training for irm in irms.values())
    # A run that is missing and no rows to train it: an error that says what to run.
    (smoke_root / "runs" / "smoke" / "irm" / "sadness-seed0" / "done.json").unlink()
    with pytest.raises(FileNotFoundError, match="sadness-seed0.*02_train_irm.ipynb"):
        trained_irms(embedded_host, profile)


@pytest.mark.slow
def test_train_command_trains_every_run_of_a_profile(tmp_path, monkeypatch, capsys):
    from irmlib.profile_runs import main

    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    # The smoke profile, one step on a few rows: the command's path, not the training, is under test.
    monkeypatch.setenv("IRM_PROFILE_OVERRIDES", json.dumps({"max_steps": 1, "data_limit": 8, "max_length": 16}))
    (tmp_path / "data").symlink_to(Path(__file__).parent.parent / "data")
    main(["--profile", "smoke"])
    printed = capsys.readouterr().out
    assert "anger-seed0: validation loss" in printed and "sadness-seed0: validation loss" in printed
    for name in ("anger-seed0", "sadness-seed0"):
        done = json.loads((tmp_path / "runs" / "smoke" / "irm" / name / "done.json").read_text())
        assert done["steps"] == 1 and done["epochs"] == 0.5  # 1 of the 2 steps of an epoch of 8 rows in batches of 4


def test_the_probe_is_the_runs_own_emotions_first_validation_texts(embedded_host):
    from irmlib import profile_runs
    from irmlib.data import as_datasets, load_alignment, rewrite_of
    from irmlib.profile import load_profile

    rows = load_alignment()
    profile = load_profile("smoke", probe_texts=3, max_length=200)
    for emotion in ("anger", "sadness"):
        probe = profile_runs.run_probe(embedded_host, profile, emotion, rows)
        first = as_datasets(rows, emotion, limit=profile.data_limit)["validation"][0]
        text = embedded_host.tokenizer.decode(probe.batch["input_ids"][0][probe.batch["attention_mask"][0].bool()])
        assert len(probe.batch["input_ids"]) == 3 and text.startswith(first["question"]) and rewrite_of(first) in text
        assert len(probe.irm_inputs) == int(probe.batch["attention_mask"].sum())


def test_train_command_starts_accelerate_launch_for_several_gpus(monkeypatch):
    from irmlib import profile_runs

    started = {}
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def execv(path, argv):
        started["argv"] = argv
        raise SystemExit(0)

    monkeypatch.setattr("os.execv", execv)
    with pytest.raises(SystemExit):
        profile_runs.main(["--profile", "paper", "--gpus", "2"])
    assert started["argv"] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "-m", "irmlib.profile_runs", "--profile", "paper"]
