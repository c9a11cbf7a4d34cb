"""Profiles: every shipped profile loads; unknown names and fields are clear errors."""

from __future__ import annotations

import pytest

from irmlib.profile import ProfileError, available_profiles, load_profile


def test_shipped_profiles_load():
    assert set(available_profiles()) >= {"smoke", "cpu", "colab", "paper"}
    paper = load_profile("paper")
    assert paper.host == "meta-llama/Llama-2-7b-chat-hf" and paper.prompt_format == "plain" and paper.loss_on == "all"
    assert paper.injected_layers is None and paper.lr == 1e-4 and paper.batch_size == 8 and paper.max_length == 128
    assert not load_profile("cpu").needs_network and not load_profile("smoke").needs_network


def test_paper_profiles_train_as_the_papers_code_and_with_the_fixed_objective():
    paper, fixed = load_profile("paper"), load_profile("paper_fixed")
    assert (paper.objective_spec().label_shift, paper.objective_spec().pad_in_loss) == (2, True)
    assert (fixed.objective_spec().label_shift, fixed.objective_spec().pad_in_loss) == (1, False)
    for profile in (paper, fixed):
        assert profile.init == "paper" and profile.val_checks_per_epoch == 4 and profile.patience == 6 and profile.lr_gamma == 0.85
    assert set(fixed.differences()) == {"objective"}


def test_unknown_profile_names_the_available_ones():
    with pytest.raises(ProfileError, match="Unknown profile 'laptop'. Available profiles: colab, cpu, paper, paper_fixed, smoke"):
        load_profile("laptop")


def test_unknown_field_names_the_valid_ones():
    with pytest.raises(ProfileError, match=r"Unknown profile field\(s\) \['epoch'\].*Valid fields: .*epochs"):
        load_profile("smoke", epoch=3)


def test_overrides_apply_and_are_checked():
    assert load_profile("smoke", batch_size=2).batch_size == 2
    with pytest.raises(ProfileError, match="'batch_size' must be a positive integer"):
        load_profile("smoke", batch_size=0)
    with pytest.raises(ProfileError, match="'max_length' must be a positive integer"):
        load_profile("smoke", max_length=-1)


def test_environment_picks_the_profile(monkeypatch):
    monkeypatch.setenv("IRM_PROFILE", "smoke")
    assert load_profile().name == "smoke"
    monkeypatch.delenv("IRM_PROFILE")
    assert load_profile().name == "cpu"
