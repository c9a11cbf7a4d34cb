"""Each notebook runs alone: in a clean copy of the repository (no other notebook run first), in the
smoke profile, checked cell by cell by nbval. A notebook that needs what an earlier one makes
makes it with the same irmlib functions: 01 and 02 start from no runs/ at all; 03-06 start from
notebook 02's IRMs as irmlib.profile_runs.trained_irms trains them when 02 has not run (the
session's smoke training, conftest.start_smoke_training), and make everything else themselves.

The notebooks run as background jobs (conftest.Background), beside the other tests."""

from __future__ import annotations

import filecmp
import sys
from pathlib import Path

import pytest

from conftest import JUDGE_CACHE, JUDGE_NOTEBOOKS, SMOKE_TRAINING, copy_of_repository, copy_smoke_runs, start_judge_cache, start_smoke_training
from irmlib.profile import NOTEBOOKS, STUDY_NOTEBOOKS

BACKGROUND_ORDER = 2  # after the paper profile's dry run, the longest job
TRAIN_THEIR_OWN = ("01_data", "02_train_irm", "07_regime")  # 01 trains nothing; 02 trains 02's runs, 07 its cells
LONGEST_FIRST = ("05_lm_head_probing", "06_mechanism", "07_regime", "03_sample_generations", "01_data", "02_train_irm",
                 "04_vertical_continuity")
ALL_NOTEBOOKS = NOTEBOOKS + STUDY_NOTEBOOKS


def run_alone(background, name: str, copy: Path, training_root: Path | None) -> dict:
    if training_root is not None:
        copy_smoke_runs(training_root, copy)
    before = sorted(str(p.relative_to(copy)) for p in (copy / "runs").rglob("*")) if (copy / "runs").exists() else []
    # IRM_ROOT puts every artifact (runs/, figures/) in the copy; irmlib itself is the installed package,
    # the same working tree's code.
    result = background.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
                             f"notebooks/{name}.ipynb"], cwd=copy, env={"IRM_ROOT": str(copy), "IRM_PROFILE": "smoke"})
    return {"result": result, "copy": copy, "runs_before": before, "training_root": training_root}


def start_background(background, items, tmp_path_factory) -> None:
    names = {item.callspec.params["name"] for item in items}
    if names & set(JUDGE_NOTEBOOKS):
        start_judge_cache(background)
    if names - set(TRAIN_THEIR_OWN):
        start_smoke_training(background, tmp_path_factory)
    # Those that fit no judge first: a worker waiting for the judge's cache would do nothing.
    for name in sorted(names, key=lambda name: (name in JUDGE_NOTEBOOKS, LONGEST_FIRST.index(name))):
        copy = copy_of_repository(tmp_path_factory.mktemp(f"alone-{name}") / "repository")
        judge = (JUDGE_CACHE,) if name in JUDGE_NOTEBOOKS else ()
        if name in TRAIN_THEIR_OWN:
            background.submit(("alone", name), lambda name=name, copy=copy: run_alone(background, name, copy, None), after=judge)
        else:
            background.submit(("alone", name), lambda name=name, copy=copy: run_alone(background, name, copy, background.result(SMOKE_TRAINING)[0]),
                              after=(SMOKE_TRAINING, *judge))


def test_the_notebooks_are_split_into_those_that_train_and_those_that_read_02s_runs():
    assert set(LONGEST_FIRST) == set(ALL_NOTEBOOKS) and set(TRAIN_THEIR_OWN) < set(ALL_NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.background
@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_runs_alone_from_a_clean_copy(name, background):
    job = background.result(("alone", name))
    result, copy = job["result"], job["copy"]
    assert result.returncode == 0, f"{name} failed when run alone:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert (copy / "figures" / "smoke" / "metrics.json").exists()
    if name in TRAIN_THEIR_OWN:
        assert job["runs_before"] == [], "a clean copy has no runs/"
    else:
        # It started from 02's runs alone (no capture, no other notebook's output) and read them as they were.
        assert job["runs_before"] == sorted(["runs/smoke", "runs/smoke/irm", *(
            str(p.relative_to(job["training_root"])) for p in (job["training_root"] / "runs" / "smoke" / "irm").rglob("*"))])
        for run in ("anger-seed0", "sadness-seed0"):
            trained = job["training_root"] / "runs" / "smoke" / "irm" / run / "done.json"
            assert filecmp.cmp(trained, copy / "runs" / "smoke" / "irm" / run / "done.json", shallow=False), f"{name} retrained {run}"
