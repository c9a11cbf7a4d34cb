"""The run layout: paths under runs/<profile>/, run names that parse back, the evaluation questions."""

from __future__ import annotations

import pytest

from irmlib.data import as_datasets, load_alignment
from irmlib.profile import load_profile
from irmlib.runs import (capture_path, eval_questions, eval_rows, is_run_name, is_run_of, notebooks_dir, parse_run_name, run_dir,
                         run_name, squad_alignment_path)


def test_paths_take_a_profile_or_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    profile = load_profile("smoke")
    assert run_dir(profile, "anger", 0) == run_dir("smoke", "anger", 0) == tmp_path / "runs/smoke/irm/anger-seed0"
    assert run_dir("smoke", "joy", 1, "mask507") == tmp_path / "runs/smoke/irm/joy-seed1-mask507"
    assert capture_path(profile, "untrained") == tmp_path / "runs/smoke/captures/untrained.safetensors"
    assert squad_alignment_path("paper") == tmp_path / "runs/paper/data/squad_alignment.jsonl"
    assert notebooks_dir(profile) == tmp_path / "runs/smoke/notebooks"


@pytest.mark.parametrize("emotion,seed,variant", [("anger", 0, ""), ("neutral", 12, "mask507"), ("joy", 3, "mask25-again")])
def test_run_names_parse_back(emotion, seed, variant):
    name = run_name(emotion, seed, variant)
    assert parse_run_name(name) == (emotion, seed, variant)
    assert is_run_name(name) and is_run_of(name, emotion) and not is_run_of(name, "sadness")


@pytest.mark.parametrize("name", ["base", "untrained", "anger-seed0 (shuffled)", "anger-seedx", "anger"])
def test_other_labels_are_not_run_names(name):
    assert not is_run_name(name) and not is_run_of(name, "anger")
    with pytest.raises(ValueError, match="not a run name"):
        parse_run_name(name)


@pytest.mark.parametrize("emotion,seed", [("very-angry", 0), ("anger", -1), ("an ger", 0)])
def test_unparseable_names_are_refused(emotion, seed):
    with pytest.raises(ValueError, match="Cannot name a run"):
        run_name(emotion, seed)


def test_eval_questions_are_the_first_test_questions_of_the_first_emotion():
    profile, rows = load_profile("cpu"), load_alignment()
    expected = as_datasets(rows, profile.emotions[0])["test"]["question"][: profile.n_eval_prompts]
    assert eval_questions(profile, rows) == expected and len(expected) == profile.n_eval_prompts
    assert {(row["emotion"], row["split"]) for row in eval_rows(profile, rows)} == {(profile.emotions[0], "test")}
