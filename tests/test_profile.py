"""Profiles: every shipped profile loads; unknown names and fields are clear errors."""

from __future__ import annotations

import pytest

from irmlib.profile import ProfileError, available_profiles, load_profile


def test_shipped_profiles_load():
    assert set(available_profiles()) >= {"smoke", "cpu", "colab", "paper"}
    paper = load_profile("paper")
    assert paper.host == "meta-llama/Llama-2-7b-chat-hf" and paper.prompt_format == "plain" and paper.loss_on == "all"
    assert paper.irm.get("injected_layers") is None and paper.train.lr == 1e-4 and paper.train.batch_size == 8 and paper.train.max_length == 128
    assert not load_profile("cpu").needs_network and not load_profile("smoke").needs_network


def test_paper_profiles_train_as_the_papers_code_and_with_the_fixed_objective():
    paper, fixed = load_profile("paper"), load_profile("paper_fixed")
    assert (paper.train.objective_spec.label_shift, paper.train.objective_spec.pad_in_loss) == (2, True)
    assert (fixed.train.objective_spec.label_shift, fixed.train.objective_spec.pad_in_loss) == (1, False)
    for profile in (paper, fixed):
        assert profile.irm["init"] == "paper"
        assert (profile.train.val_checks_per_epoch, profile.train.patience, profile.train.lr_gamma) == (4, 6, 0.85)
    assert set(fixed.differences()) == {"objective"}


def test_unknown_profile_names_the_available_ones():
    with pytest.raises(ProfileError, match="Unknown profile 'laptop'. Available profiles: colab, cpu, paper, paper_fixed, regime, smoke"):
        load_profile("laptop")


def test_unknown_field_names_the_valid_ones():
    with pytest.raises(ProfileError, match=r"Unknown profile field\(s\) 'epoch' in profile 'smoke'\. Valid fields: .*epochs"):
        load_profile("smoke", epoch=3)


def test_overrides_apply_and_are_checked():
    assert load_profile("smoke", batch_size=2).train.batch_size == 2
    with pytest.raises(ProfileError, match=r"Profile 'smoke': train\.batch_size: expected a whole number from 1 to 2\*\*63 - 1, got 0"):
        load_profile("smoke", batch_size=0)
    with pytest.raises(ProfileError, match=r"train\.max_length: expected a whole number"):
        load_profile("smoke", max_length=-1)
    with pytest.raises(ProfileError, match="objective 'paper' unknown; choose one of fixed, paper_code"):
        load_profile("smoke", objective="paper")
    with pytest.raises(ProfileError, match="prompt_format must be one of plain, chat"):
        load_profile("smoke", prompt_format="chatml")


def test_yaml_sections_and_fields_named_directly_are_the_same_profile():
    by_section = load_profile("smoke", train={"lr": 1e-3, "objective": "fixed"}, irm={"init": "zero", "injected_layers": [0]})
    by_name = load_profile("smoke", lr=1e-3, objective="fixed", init="zero", injected_layers=[0])
    assert by_section == by_name
    assert by_name.train.lr == 1e-3 and by_name.irm == {"init": "zero", "injected_layers": (0,)}
    assert by_name.train.objective_spec.label_shift == 1
    with pytest.raises(ProfileError, match=r"Unknown profile field\(s\) train\.'init' in profile"):
        load_profile("smoke", train={"init": "zero"})


def test_differences_name_each_knob_once():
    smoke = load_profile("smoke")
    differences = smoke.differences()
    assert differences["injected_layers"] == ((0, 14, 29), None) and differences["lr"] == (3e-3, 1e-4)
    assert "objective" not in differences and "init" not in differences  # smoke trains as the paper's code


def test_differences_compare_with_the_reference_without_the_environment_overrides(monkeypatch):
    monkeypatch.setenv("IRM_PROFILE_OVERRIDES", '{"max_steps": 2, "lr": 3e-3}')
    smoke = load_profile("smoke")
    differences = smoke.differences()
    # The reference is the paper's setup as shipped: the overrides change the profile shown, not what it is shown against.
    assert differences["max_steps"] == (2, None) and differences["lr"] == (3e-3, 1e-4)


@pytest.mark.parametrize("field", ["data_limit", "squad_rows", "max_new_tokens", "n_eval_prompts", "epochs", "max_steps", "track_every"])
def test_a_count_of_zero_names_its_lower_bound(field):
    # 0 would not mean "none": a row limit of 0 read as "all rows", a step limit of 0 as a run that never starts.
    with pytest.raises(ProfileError, match=rf"{field}: expected a whole number from 1 to 2\*\*63 - 1.*, got 0"):
        load_profile("smoke", **{field: 0})


def test_a_float_field_given_a_huge_integer_is_a_named_error():
    with pytest.raises(ProfileError, match=r"train\.lr: expected a finite number, got an integer too large for a float"):
        load_profile("smoke", lr=10**400)


def test_environment_picks_the_profile(monkeypatch):
    monkeypatch.setenv("IRM_PROFILE", "smoke")
    assert load_profile().name == "smoke"
    monkeypatch.delenv("IRM_PROFILE")
    assert load_profile().name == "cpu"


def test_environment_overrides_apply_to_every_profile_load(monkeypatch):
    monkeypatch.setenv("IRM_PROFILE_OVERRIDES", '{"host": "/models/tiny", "max_steps": 2, "irm": {"init": "zero"}}')
    paper = load_profile("paper", max_steps=3)
    assert paper.host == "/models/tiny" and paper.irm["init"] == "zero"
    assert paper.train.max_steps == 3  # an explicit override wins over the environment's
    monkeypatch.setenv("IRM_PROFILE_OVERRIDES", '{"max_step": 2}')
    with pytest.raises(ProfileError, match=r"IRM_PROFILE_OVERRIDES: Unknown profile field\(s\) 'max_step' in profile"):
        load_profile("paper")
    monkeypatch.setenv("IRM_PROFILE_OVERRIDES", "max_steps=2")
    with pytest.raises(ProfileError, match="IRM_PROFILE_OVERRIDES is not valid JSON"):
        load_profile("paper")
