"""Notebook 06's measurements (irmlib.studies.mechanism): the hypotheses' predictions, the arms
(arm A sharing notebook 02's runs), their summaries and their tone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import RuleJudge
import torch

from conftest import striated, tiny_tokenizer
from irmlib.irm import IRM, IRMConfig
from irmlib.claims import HELD, NOT_HELD, NOT_TESTED
from irmlib.objective import make_paper_collate
from irmlib.profile import load_profile
from irmlib.residual import norm_gains
from irmlib.runs import run_name
from irmlib.profile_runs import arm_profiles, arm_variant
from irmlib.studies.mechanism import (arm_runs, arm_summary, arm_tone, curve_verdict, effect_claim,
                                      frequency_alignment, gradient_sign_consistency, index_profile, layer_subset_claim,
                                      layer_subset_summary, prediction_sets, predictions, run_effects, set_claims, set_hits,
                                      subset_arms, token_counts)
from irmlib.scoring import tone_table
from train_tiny import tiny_rows


def test_gradient_sign_consistency_is_one_for_a_single_position_and_bounded(tiny_host):
    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(tiny_host, injected_layers=(1,), init="paper"))
    rows = [{"input_ids": r["input_ids"] + [2]} for r in tiny_rows(4, 0)]
    batch = make_paper_collate(2, 12, 2)(rows)
    consistency = gradient_sign_consistency(tiny_host, irm, [batch], label_shift=2)
    assert consistency.shape == (tiny_host.hidden_size,)
    assert ((consistency >= 0) & (consistency <= 1 + 1e-9)).all() and consistency.max() < 1
    single = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long), "labels": torch.tensor([[-100, 9, -100]])}
    np.testing.assert_allclose(gradient_sign_consistency(tiny_host, irm, [single], label_shift=1), 1.0)
    assert all(p.grad is None for p in tiny_host.model.parameters())


def test_norm_gains_frequency_alignment_and_predictions(tiny_host):
    with torch.no_grad():
        for layer in tiny_host.layers:
            layer.input_layernorm.weight[7] = 1e-4
            layer.post_attention_layernorm.weight[7] = 1e-4
        tiny_host.final_norm.weight[3] = 1e-5
        counts = token_counts([[5, 5, 5, 6], [5, 9]], tiny_host.lm_head.weight.shape[0])
        assert counts[5] == 4 and counts[6] == 1 and counts.sum() == 6
        tiny_host.lm_head.weight[:, 13] = torch.log1p(torch.as_tensor(counts, dtype=torch.float32))
    gains = norm_gains(tiny_host)
    assert gains.layer_norm_gain.idxmin() == 7 and gains.final_norm_gain.idxmin() == 3
    alignment = frequency_alignment(tiny_host, counts)
    assert alignment[13] == pytest.approx(1.0) and np.abs(alignment).max() <= 1 + 1e-9
    named = predictions(np.eye(tiny_host.hidden_size)[5], gains, alignment)
    assert named == {"a_gradient_sign": 5, "b_layer_norm_gain": 7, "b_final_norm_gain": 3, "c_frequency": 13}
    from irmlib.host import Host

    host = Host(model=tiny_host.model, tokenizer=tiny_tokenizer(), name="tiny", family=tiny_host.family)
    profile = index_profile(host, 7, gains, np.arange(tiny_host.hidden_size, dtype=float), alignment)
    assert profile["rank_smallest_layer_norm_gain"] == 1 and profile["rank_largest_massive_ratio"] == tiny_host.hidden_size - 7
    column = host.lm_head.weight[:, 7]
    assert profile["eos_rank_along_index"] == int((column > column[2]).sum()) + 1 and len(profile["promoted"]) == 10


def test_arms_of_the_cpu_profile():
    profile = load_profile("cpu")
    arms = arm_profiles(profile)
    assert set(arms) == {"A", "B", "C", "D", "E", "F", "T", *LAYER_SUBSETS}
    assert {name: list(arms[name].irm["injected_layers"]) for name in LAYER_SUBSETS} == LAYER_SUBSETS
    assert all(arms[name].train.objective_spec == arms["A"].train.objective_spec for name in LAYER_SUBSETS)
    spec = {name: arm.train.objective_spec for name, arm in arms.items()}
    assert (spec["A"].label_shift, spec["A"].pad_in_loss) == (2, True)
    assert (spec["B"].label_shift, spec["B"].pad_in_loss) == (1, False)
    assert (spec["C"].label_shift, spec["C"].pad_in_loss) == (1, True)
    assert (spec["D"].label_shift, spec["D"].pad_in_loss) == (2, False)
    assert arms["E"].irm.get("output_rotation_seed") is not None and arms["A"].irm.get("output_rotation_seed") is None
    ablations = [arms[name] for name in "ABCDE"]
    assert all(arm.irm["init"] == "paper" and arm.prompt_format == "plain" and arm.loss_on == "all" for arm in ablations)
    assert len({(arm.train.max_steps, arm.train.lr) for arm in ablations}) == 1  # the same budget
    tone_recipe = arms["F"]  # the reference: chat template, loss on the answer, zero init, the paper's lr
    assert (tone_recipe.prompt_format, tone_recipe.loss_on, tone_recipe.irm["init"], tone_recipe.train.lr) == ("chat", "answer", "zero", 1e-4)
    # F keeps the companion's first tone recipe: the paper's step decay, no warmup, no clipping.
    assert (tone_recipe.train.decay, tone_recipe.train.warmup_steps, tone_recipe.train.clip_grad_norm) == ("step", 0, None)
    assert (arms["A"].train.decay, arms["A"].train.warmup_steps, arms["A"].train.clip_grad_norm) == ("cosine", 15, 1.0)
    # T, notebook 03's tone arm, is B at the regime map's recommended rate, on A's schedule and steps.
    assert profile.tone_arm == "T" and arms["T"].train.objective_spec == arms["B"].train.objective_spec
    assert arms["T"].train.lr == 1e-4 and arms["B"].train.lr == 1e-3
    assert replace(arms["T"].train, lr=arms["B"].train.lr) == arms["B"].train
    runs = arm_runs(profile)
    assert len(runs) == len(set(runs)) and {r[0] for r in runs} == set(arms)
    assert sum(r[0] == "A" for r in runs) == 4 and sum(r[0] == "B" for r in runs) == 4
    assert all(sum(r[0] == arm for r in runs) == 3 for arm in "CDEFT") and all(sum(r[0] == arm for r in runs) == 2 for arm in LAYER_SUBSETS)
    # An arm that trains exactly as the profile's own runs shares them (no variant); others get their own.
    assert arm_variant(profile, arms["B"], "B") == "armB"
    assert arm_variant(profile, arms["A"], "A") == ""
    with pytest.raises(ValueError, match="mechanism.arms"):
        arm_profiles(replace(profile, mechanism=None, tone_arm=None))
    with pytest.raises(ValueError, match="tone_arm: 'Z' is not an arm"):
        replace(profile, tone_arm="Z")


LAYER_SUBSETS = {"L0-7": list(range(8)), "L24-29": list(range(24, 30)), "Levery4": list(range(0, 30, 4))}


def test_arms_can_run_a_stated_number_of_times_and_over_layer_subsets():
    profile = load_profile("cpu")
    spec = {"base": {}, "arms": {"A": {"objective": "paper_code"}, "C": {"objective": "paper_code", "label_shift": 1},
                                  **{name: {"objective": "paper_code", "injected_layers": layers} for name, layers in LAYER_SUBSETS.items()}},
            "replicated": ["A"], "runs": {"C": 3, "L0-7": 2, "L24-29": 2, "Levery4": 2},
            "emotions": ["anger", "sadness"], "seeds": [0, 1]}
    with_subsets = replace(profile, mechanism=spec, tone_arm=None)
    runs = arm_runs(with_subsets)
    assert [r for r in runs if r[0] == "C"] == [("C", "anger", 0), ("C", "anger", 1), ("C", "sadness", 0)]
    assert [r for r in runs if r[0] == "L24-29"] == [("L24-29", "anger", 0), ("L24-29", "anger", 1)]  # one emotion, two seeds
    assert sum(r[0] == "A" for r in runs) == 4 and len(runs) == 4 + 3 + 3 * 2
    arms = arm_profiles(with_subsets)
    assert list(arms["L24-29"].irm["injected_layers"]) == list(range(24, 30))
    names = {run_name(emotion, seed, arm_variant(with_subsets, arms[arm], arm)) for arm, emotion, seed in runs if arm.startswith("L")}
    assert names == {f"anger-seed{seed}-arm{arm}" for arm in LAYER_SUBSETS for seed in (0, 1)}
    with pytest.raises(ValueError, match="not arms"):
        arm_runs(replace(profile, mechanism=spec | {"runs": {"Z": 2}}, tone_arm=None))
    with pytest.raises(ValueError, match="from 1 to 4"):
        arm_runs(replace(profile, mechanism=spec | {"runs": {"C": 5}}, tone_arm=None))


def test_prediction_sets_and_their_hits_against_chance():
    gains = pd.DataFrame({"layer_norm_gain": [0.5, 0.1, 0.9, 0.2, 0.8, 0.7], "final_norm_gain": [0.9, 0.8, 0.1, 0.7, 0.6, 0.5]})
    sets = prediction_sets(np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.0]), gains, k=2)
    assert sets == {"b_smallest_layer_norm_gain": [1, 3], "b_smallest_final_norm_gain": [2, 5], "d_sign_consistent": [3, 4]}
    hits = set_hits(sets, {"r0": 3, "r1": 3, "r2": 0}, hidden=6)
    row = hits.loc["b_smallest_layer_norm_gain"]
    assert (row.hits, row.runs, row.chance, row.hit_runs) == (2, 3, 2 / 6, ["r0", "r1"])
    assert row.p_value == pytest.approx(1 - (2 / 3) ** 3 - 3 * (1 / 3) * (2 / 3) ** 2)  # P(at least 2 of 3 at chance 1/3)
    assert hits.loc["b_smallest_final_norm_gain", "hits"] == 0 and hits.loc["b_smallest_final_norm_gain", "p_value"] == 1.0
    many = set_hits({"s": [7]}, {f"r{i}": 7 for i in range(4)}, hidden=576)
    assert many.loc["s", "verdict"] == HELD and many.loc["s", "p_value"] < 1e-9
    claims = {claim.number: claim for claim in set_claims(pd.concat([hits, many]))}
    assert claims["3, set s"].verdict == HELD and "4 of 4 runs (r0, r1, r2, r3)" in claims["3, set s"].evidence
    assert claims["3, set b_smallest_final_norm_gain"].verdict == NOT_HELD and "0 of 3 runs (none)" in claims["3, set b_smallest_final_norm_gain"].evidence


def subset_result(arm: str, seed: int, index: int, flag: str = "ok") -> dict:
    return {"run": f"{arm}:anger-seed{seed}", "arm": arm, "emotion": "anger", "seed": seed, "flag": flag, "dominant_index": index,
            "index_share": 0.4, "layer_share": 0.1}


def test_layer_subset_arms_are_read_against_arm_a_on_the_same_runs():
    profile = load_profile("cpu")
    spec = {"base": {}, "arms": {"A": {"objective": "paper_code"}, "B": {"objective": "fixed"},
                                  **{name: {"objective": "paper_code", "injected_layers": layers} for name, layers in LAYER_SUBSETS.items()}},
            "replicated": ["A"], "emotions": ["anger", "sadness"], "seeds": [0, 1]}
    with_subsets = replace(profile, mechanism=spec, tone_arm=None)
    assert subset_arms(with_subsets) == list(LAYER_SUBSETS)
    arms = arm_profiles(with_subsets)
    results = [subset_result("A", 0, 507), subset_result("A", 1, 507), subset_result("B", 0, 9),
               subset_result("A", 0, 99) | {"run": "A:sadness-seed0", "emotion": "sadness"},
               subset_result("L24-29", 0, 507), subset_result("L24-29", 1, 507), subset_result("L0-7", 0, 507, "host damaged")]
    table = layer_subset_summary(results, arms, ["L0-7", "L24-29"])
    # A's runs on the subsets' emotions and seeds only; B and A's sadness run are not compared.
    assert list(table.index) == ["A:anger-seed0", "A:anger-seed1", "L24-29:anger-seed0", "L24-29:anger-seed1", "L0-7:anger-seed0"]
    assert table.loc["A:anger-seed0", "layers"] == "all" and table.loc["L24-29:anger-seed0", "layers"] == "24, 25, 26, 27, 28, 29"
    claim = layer_subset_claim(table, hidden=576)
    assert claim.verdict == HELD and "L0-7:anger-seed0 (layers 0, 1, 2, 3, 4, 5, 6, 7): 507, host damaged, not counted" in claim.evidence
    moved = layer_subset_summary(results[:-1] + [subset_result("L0-7", 0, 12)], arms, ["L0-7", "L24-29"])
    assert layer_subset_claim(moved, hidden=576).verdict == NOT_HELD
    # One arm's unflagged runs alone cannot say whether the index depends on the layers.
    alone = layer_subset_summary([subset_result("L24-29", 0, 507), subset_result("L24-29", 1, 507)], arms, ["L24-29"])
    assert layer_subset_claim(alone, hidden=576).verdict == NOT_TESTED
    assert layer_subset_claim(pd.DataFrame(), hidden=576).verdict == NOT_TESTED


def test_the_effect_claim_reads_unflagged_runs_only():
    def record(masked: float, verdict: str) -> dict:
        conditions = {c: {"entropy": 2.0, "index_share": 0.01} for c in ("host", "irm", "only", "masked", "moved")}
        return {"index": 5, "moved_to": 6, "conditions": conditions, "temperature": {"share": 0.5}, "verdict": verdict,
                "shares": {"distribution": {"irm_change": 3.0, "only": 1 - masked, "masked": masked, "moved": 0.9}}}

    results = [{"run": "A:anger-seed0", "arm": "A", "flag": "ok", "dominant_index_effect": record(0.99, "inert (d)")},
               {"run": "A:anger-seed1", "arm": "A", "flag": "host damaged", "dominant_index_effect": record(0.1, "norm knob (b)")},
               {"run": "B:anger-seed0", "arm": "B", "flag": "ok"}]  # not measured
    effects = run_effects(results)
    assert list(effects.index) == ["A:anger-seed0", "A:anger-seed1"] and list(effects.flag) == ["ok", "host damaged"]
    claim = effect_claim(effects, much=0.5)
    assert claim.verdict == NOT_HELD and "A:anger-seed1" not in claim.evidence and "masked keeps 0.990" in claim.evidence
    assert effect_claim(effects.drop("A:anger-seed0"), much=0.5).verdict == NOT_TESTED


def test_arm_summary_and_curve_verdict():
    results = [{"run": f"r{i}", "index_share": 0.5, "layer_share": 0.1, "vertical_continuity": 0.8, "best_val_loss": 2.0,
                "yardstick_host": 3.0, "yardstick_end": 3.5, "flag": "ok", "dominant_index": 3, "matrix": striated(index=3, seed=i)}
               for i in range(3)]
    summary = arm_summary(results, hidden=20, k=5)
    assert summary["shared_dominant_index"] == 3 and summary["top1_agreement"] == 1.0 and summary["runs"] == 3
    assert summary["yardstick_end"] == 3.5 and summary["flagged"] == {}
    # A flagged run is named, never pooled: its index, share and yardstick leave the arm's numbers alone.
    damaged = results[0] | {"run": "bad", "flag": "host damaged", "index_share": 0.9, "yardstick_end": 9.0, "dominant_index": 11,
                            "matrix": striated(index=11, seed=5)}
    assert arm_summary(results + [damaged], hidden=20, k=5) == summary | {"flagged": {"bad": "host damaged"}}
    nothing = arm_summary([damaged], hidden=20, k=5)
    assert nothing["runs"] == 0 and nothing["shared_dominant_index"] is None and np.isnan(nothing["index_share"])
    assert summary["pairs"] == 3 and summary["top1_agreeing_pairs"] == 3 and summary["top1_chance"] == 1 / 20 and summary["top5_chance"] == 5 / 20
    assert summary["dominant_indices"] == [3, 3, 3]
    alone = arm_summary(results[:1], hidden=20)
    assert np.isnan(alone["top1_agreement"]) and alone["shared_dominant_index"] is None  # one run shares nothing
    apart = [results[0] | {"run": f"s{i}", "matrix": striated(index=index, seed=i), "dominant_index": index}
             for i, index in enumerate((3, 9))]
    disagreeing = arm_summary(apart, hidden=20, k=5)
    assert disagreeing["shared_dominant_index"] is None and disagreeing["top1_agreement"] == 0.0 and disagreeing["pairs"] == 1
    assert disagreeing["top1_agreeing_pairs"] == 0
    flat = pd.DataFrame({"run": ["a"] * 4, "step": [0, 10, 20, 30], "index_share": [0.1, 0.5, 0.505, 0.51]})
    rising = flat.assign(index_share=[0.1, 0.2, 0.3, 0.4])
    assert curve_verdict(flat)["curve"] == "had flattened" and curve_verdict(rising)["curve"] == "was still moving"
    assert curve_verdict(pd.DataFrame())["curve"] == "not tracked"


def length_judge():
    """p(anger) grows with the text's length: enough of a judge for the scoring code path."""
    return RuleJudge(lambda t: min(len(t) / 100, 1.0))


@pytest.mark.slow
def test_tone_table_pairs_each_model_with_the_base(embedded_host):
    unchanged = IRM(IRMConfig.for_host(embedded_host, injected_layers=(0, 29)))  # zero init: the host's own text
    questions = ["Name a colour.", "What is 2 + 2?"]
    table = tone_table(embedded_host, length_judge(), {"zero-init": unchanged}, "anger", questions, "chat", 6, min_scored=2)
    assert table.index.tolist() == ["base", "zero-init"]
    assert table.loc["base", "verdict"] == "base" and table.loc["zero-init", "verdict"] == "did not clearly change"
    assert table.loc["zero-init", "p_target_change"] == 0.0 and table.loc["zero-init", "scored"] == 2
    assert table.loc["zero-init", "p_target"] == table.loc["base", "p_target"]
    assert table.loc["zero-init", "text"] == table.loc["base", "text"]  # the same text judged the same way
    too_few = tone_table(embedded_host, length_judge(), {"zero-init": unchanged}, "anger", questions, "chat", 6, min_scored=3)
    assert too_few.loc["zero-init", "verdict"].startswith("not tested")


@pytest.mark.slow
def test_arm_tone_prompts_each_arm_as_it_trained(embedded_host):
    arms = arm_profiles(load_profile("smoke"))
    zero = IRM(IRMConfig.for_host(embedded_host, injected_layers=(0, 29), init="zero"))  # the host's own text, either format
    tone = arm_tone(embedded_host, length_judge(), {"A": zero, "F": zero}, arms, "anger", ["Name a colour.", "What is 2 + 2?"], 6,
                    min_scored=2)
    assert tone.index.tolist() == ["base (plain)", "arm A", "base (chat)", "arm F"]
    assert tone.loc["arm A", "prompt_format"] == "plain" and tone.loc["arm F", "prompt_format"] == "chat"
    assert (tone.loc[["arm A", "arm F"], "p_target_change"] == 0).all()


@pytest.mark.slow
def test_arm_a_shares_notebook_02s_runs(embedded_host, smoke_root, smoke_training):
    """Arm A trains exactly as the profile's own runs: run_arm finds notebook 02's finished run
    (no variant, no training) and measures it; arm B trains a run of its own."""
    from irmlib.profile_runs import run_probe
    from irmlib.runs import irm_dir, run_dir
    from irmlib.studies.mechanism import run_arm

    profile, rows = smoke_training["profile"], smoke_training["rows"]
    arms = arm_profiles(profile)
    assert arm_variant(profile, arms["A"], "A") == "" and arm_variant(profile, arms["B"], "B") == "armB"
    shared = run_dir(profile, "anger", 0)
    done_before = (shared / "done.json").read_text()
    weights_mtime = (shared / "last" / "irm.safetensors").stat().st_mtime_ns
    before = {p.name for p in irm_dir(profile).iterdir()}
    probe = run_probe(embedded_host, profile, "anger", rows)
    result = run_arm(embedded_host, profile, arms, "A", "anger", 0, rows, probe, gains=norm_gains(embedded_host).layer_norm_gain)
    assert result["irm_dir"] == shared / "last" and result["run"] == "A:anger-seed0"
    effect = result["dominant_index_effect"]  # the dominant index's effect, at arm A's label shift (the token after next)
    assert effect["index"] == result["dominant_index"] and effect["label_shift"] == 2 and effect["moved_to"] != effect["index"]
    # The same probe texts as the run's recorded host yardstick (that one under the run's precision: bf16 where it applies).
    assert effect["conditions"]["host"]["yardstick"] == pytest.approx(result["yardstick_host"], rel=0.02)
    assert {p.name for p in irm_dir(profile).iterdir()} == before, "arm A made a run directory of its own"
    assert (shared / "done.json").read_text() == done_before and (shared / "last" / "irm.safetensors").stat().st_mtime_ns == weights_mtime
    # Measured on the probe texts the tracker read, on the same IRM: its last tracked row.
    assert result["dominant_index"] == result["tracking"].dominant_index.iloc[-1]
    assert result["index_share"] == pytest.approx(result["tracking"].index_share.iloc[-1], rel=1e-4)
    assert result["flag"] in ("ok", "unstable", "host damaged", "unstable, host damaged") and result["yardstick_end"] > 0
    assert result["steps"] == profile.train.max_steps and result["matrix"].shape == (len(profile.irm["injected_layers"]), embedded_host.hidden_size)
    assert not result["tracking"].empty, "02's tracked striation metrics are arm A's curve"
