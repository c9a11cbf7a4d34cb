"""The profile's `analysis:` section, `extends:`, and the notebooks' `overrides` parameter."""

from __future__ import annotations

import pytest

import irmlib.profile as profile_module
from irmlib.profile import ProfileError, load_profile


def test_paper_fixed_is_paper_but_for_its_objective():
    paper, fixed = load_profile("paper").knobs(), load_profile("paper_fixed").knobs()
    assert {k for k in paper if paper[k] != fixed[k]} == {"name", "objective"}
    assert fixed["objective"] == "fixed"


def test_extends_reads_the_base_first_and_refuses_a_cycle(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_module, "PROFILE_DIR", tmp_path)
    (tmp_path / "base.yaml").write_text("seeds: [0, 1]\ntrain: {lr: 0.001, epochs: 3}\nanalysis: {alphas: [0, 1]}\n")
    (tmp_path / "child.yaml").write_text("extends: base\ntrain: {lr: 0.01}\n")
    child = load_profile("child")
    assert child.seeds == (0, 1) and child.train.lr == 0.01 and child.train.epochs == 3 and child.analysis.alphas == (0, 1)
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ProfileError, match="cycle"):
        load_profile("a")
    (tmp_path / "lost.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ProfileError, match="lost.yaml: 'extends: nowhere' must name another profile"):
        load_profile("lost")


def test_analysis_fields_route_by_name_or_section_and_are_validated():
    assert load_profile("smoke", min_scored_texts=5).analysis.min_scored_texts == 5
    assert load_profile("smoke", analysis={"nudge_sizes": [2.0]}).analysis.nudge_sizes == (2.0,)
    for bad in ({"top_k": 0}, {"alphas": []}, {"alphas": [-1.0]}, {"analysis": {"nope": 1}}):
        with pytest.raises(ProfileError):
            load_profile("smoke", **bad)


def test_the_notebooks_overrides_parameter_reaches_the_profile(monkeypatch):
    from irmlib import session

    monkeypatch.setattr(session, "load_host", lambda spec: pytest.fail("host=False loads no host"))
    setup = session.start("smoke", {"max_steps": 7, "alphas": [0.0, 3.0]}, host=False, rows=False)
    assert setup.config.train.max_steps == 7 and setup.config.analysis.alphas == (0.0, 3.0)
    assert setup.host is None and setup.rows is None and setup.metrics_path == setup.figure_dir / "metrics.json"
