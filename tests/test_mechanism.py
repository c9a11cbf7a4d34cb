"""Notebook 06's measurements: the tracker, the hypotheses' predictions, the arms, and the
definitions every notebook shares (dominant index, signed heatmap matrix, captures)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from irmlib.analysis import caa_steering, host_hidden_states, shared_dominant_index, signed_matrix
from irmlib.generate import CapturedOutputs
from irmlib.irm import IRM, IRMConfig
from irmlib.mechanism import (StriationTracker, arm_profiles, arm_runs, arm_summary, arm_variant, curve_verdict, frequency_alignment,
                              gradient_sign_consistency, index_profile, irm_inputs, norm_gains, predictions, token_counts)
from irmlib.objective import make_paper_collate
from irmlib.profile import load_profile
from test_analysis import striated, tiny_tokenizer
from train_tiny import tiny_rows


def test_signed_matrix_keeps_the_sign_and_pools_tokens():
    a = -torch.ones(1, 2, 3)
    b = torch.full((3, 2, 3), 5.0)
    np.testing.assert_allclose(signed_matrix([a, b]), (-1 + 15) / 4)
    np.testing.assert_allclose(signed_matrix(torch.stack([torch.ones(2, 3), -torch.ones(2, 3)])), 0.0)


def test_shared_dominant_index_is_the_most_frequent_with_ties_broken_by_summed_importance():
    runs = {"a": striated(index=3, seed=0), "b": striated(index=3, seed=1), "c": striated(index=9, seed=2)}
    assert shared_dominant_index(runs) == 3
    tie = {"a": striated(index=3, seed=0), "b": striated(index=9, seed=1)}
    tie["b"][:, 9] += 5  # index 9 is larger in total
    assert shared_dominant_index(tie) == 9
    with pytest.raises(ValueError):
        shared_dominant_index({})


def test_captures_keep_prompt_and_generated_tokens_apart(tmp_path):
    captured = CapturedOutputs([torch.arange(24.0).reshape(4, 2, 3), torch.ones(3, 2, 3)], [1, 2])
    assert [len(t) for t in captured.part("prompt")] == [1, 2] and [len(t) for t in captured.part("generated")] == [3, 1]
    size = captured.save(tmp_path / "c.safetensors")
    loaded = CapturedOutputs.load(tmp_path / "c.safetensors")
    assert size > 0 and loaded.prompt_tokens == [1, 2] and all(torch.equal(a, b) for a, b in zip(loaded.irm_outputs, captured.irm_outputs))
    with pytest.raises(ValueError, match="part must be"):
        captured.part("answer")


def test_irm_inputs_are_the_residual_after_layer_0_attention(tiny_host):
    from irmlib.inject import Injection

    irm = IRM(IRMConfig.for_host(tiny_host, init="torch"))
    seen = {}
    original = irm.forward
    irm.forward = lambda h: seen.setdefault("h", h.detach().clone()) is not None and original(h)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    injection = Injection(tiny_host, irm)
    with torch.no_grad():
        tiny_host.model(input_ids=ids, attention_mask=mask)
    injection.remove()
    inputs = irm_inputs(tiny_host, ids, mask)
    assert inputs.shape == (6, tiny_host.hidden_size)
    torch.testing.assert_close(inputs, seen["h"][mask.bool()])


def test_tracker_sees_a_planted_striation(tiny_host):
    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(tiny_host, init="paper"))
    inputs = torch.randn(20, tiny_host.hidden_size)
    before = StriationTracker(inputs)(irm)
    with torch.no_grad():
        irm.mlp[-1].bias.view(irm.config.n_injected, -1)[:, 11] = 5.0
    after = StriationTracker(inputs)(irm)
    assert after["dominant_index"] == 11 and after["vertical_continuity"] == 1.0
    assert after["index_share"] > 0.9 > before["index_share"]
    assert after["top5"].split()[0] == "11"


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
    assert profile["rank_smallest_layer_norm_gain"] == 1 and profile["rank_massive_ratio"] == tiny_host.hidden_size - 7
    column = host.lm_head.weight[:, 7]
    assert profile["eos_rank_along_index"] == int((column > column[2]).sum()) + 1 and len(profile["promoted"]) == 10


def test_arms_of_the_cpu_profile():
    profile = load_profile("cpu")
    arms = arm_profiles(profile)
    assert set(arms) == {"A", "B", "C", "D", "E", "F"}
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
    runs = arm_runs(profile)
    assert len(runs) == len(set(runs)) and {r[0] for r in runs} == set(arms)
    assert sum(r[0] == "A" for r in runs) >= 4 and sum(r[0] == "C" for r in runs) == 1
    # An arm that trains exactly as the profile's own runs shares them (no variant); others get their own.
    assert arm_variant(profile, arms["B"], "B") == "armB"
    assert arm_variant(profile, profile, "A") == ""
    with pytest.raises(ValueError, match="mechanism.arms"):
        arm_profiles(replace(profile, mechanism=None))


def test_arm_summary_and_curve_verdict():
    results = [{"run": f"r{i}", "index_share": 0.5, "layer_share": 0.1, "vertical_continuity": 0.8, "best_val_loss": 2.0,
                "dominant_index": 3, "matrix": striated(index=3, seed=i)} for i in range(3)]
    summary = arm_summary(results)
    assert summary["shared_dominant_index"] == 3 and summary["top1_agreement"] == 1.0 and summary["runs"] == 3
    assert np.isnan(arm_summary(results[:1])["top1_agreement"])
    flat = pd.DataFrame({"run": ["a"] * 4, "step": [0, 10, 20, 30], "index_share": [0.1, 0.5, 0.505, 0.51]})
    rising = flat.assign(index_share=[0.1, 0.2, 0.3, 0.4])
    assert curve_verdict(flat)["curve"] == "had flattened" and curve_verdict(rising)["curve"] == "was still moving"
    assert curve_verdict(pd.DataFrame())["curve"] == "not tracked"


def test_caa_steering_is_the_last_token_difference_of_block_outputs(tiny_host):
    from irmlib.host import Host

    host = Host(model=tiny_host.model, tokenizer=tiny_tokenizer(), name="tiny", family=tiny_host.family)
    pairs = [("w5 w6 w7", "w8 w9"), ("w10 w11", "w12 w13 w14 w15")]
    vector = caa_steering(host, pairs, batch_size=1)
    assert vector.shape == (host.n_layers, host.hidden_size)
    last = lambda text: host_hidden_states(host, texts=[text])[-1].double().numpy()  # [layers, hidden] at the last token
    expected = np.mean([last(p) - last(n) for p, n in pairs], axis=0)
    np.testing.assert_allclose(vector, expected, atol=1e-4)


@pytest.mark.slow
def test_arm_tone_prompts_each_arm_as_it_trained():
    from irmlib.host import load_host
    from irmlib.mechanism import arm_tone

    class LengthJudge:
        labels = ["anger", "neutral"]

        def probabilities(self, texts):
            p = np.array([min(len(t) / 100, 1.0) for t in texts])
            return pd.DataFrame({"anger": p, "neutral": 1 - p})

    host = load_host("embedded", device="cpu")
    arms = arm_profiles(load_profile("smoke"))
    zero = IRM(IRMConfig.for_host(host, injected_layers=(0, 29), init="zero"))  # the host's own text, either format
    tone = arm_tone(host, LengthJudge(), {"A": zero, "F": zero}, arms, "anger", ["Name a colour.", "What is 2 + 2?"], 6)
    assert tone.index.tolist() == ["base (plain)", "arm A", "base (chat)", "arm F"]
    assert tone.loc["arm A", "prompt_format"] == "plain" and tone.loc["arm F", "prompt_format"] == "chat"
    assert (tone.loc[["arm A", "arm F"], "p_target_change"] == 0).all()
