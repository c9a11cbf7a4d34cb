"""Notebook 05's study (irmlib.studies.lm_head): the logit direction of an index, a nudge that
moves exactly one index, and retraining an IRM with its dominant index masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RuleJudge
import torch

from irmlib.studies.lm_head import index_logit_direction, logit_spread, next_token_kl, nudged, retrain_masked


def test_logit_direction_is_the_head_column_times_the_norm_weight(tiny_host):
    tiny_host.final_norm.weight.data[5] = 3.0
    direction = index_logit_direction(tiny_host, 5)
    assert torch.allclose(direction, tiny_host.lm_head.weight[:, 5] * 3.0)
    assert logit_spread(tiny_host)[5] == pytest.approx(float(direction.std()), rel=1e-5)


def test_nudge_moves_one_index_by_size_times_rms(tiny_host):
    captured = {}
    hook = tiny_host.layers[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("h", out.clone()))
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tiny_host.model(ids)
        plain = captured["h"]
        hook.remove()
        with nudged(tiny_host, 9, 4.0):
            hook = tiny_host.layers[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("h", out.clone()))
            tiny_host.model(ids)
            hook.remove()
    moved = captured["h"] - plain
    rms = plain.pow(2).mean(-1).sqrt()
    assert torch.allclose(moved[..., 9], 4.0 * rms, atol=1e-5)
    assert moved[..., [i for i in range(32) if i != 9]].abs().max() == 0


@pytest.mark.slow
def test_next_token_kl_is_zero_without_a_nudge_and_grows_with_it(embedded_host):
    kl = next_token_kl(embedded_host, ["What is the capital of France?", "Name a fruit."], 100, (0.0, 2.0, 8.0), "chat")
    means = kl.groupby("size").kl.mean()
    assert means[0.0] == pytest.approx(0.0, abs=1e-6)
    assert 0 < means[2.0] < means[8.0]


def word_count_judge():
    """p(anger) grows with the number of words: enough of a judge for the scoring code path."""
    return RuleJudge(lambda t: min(len(t.split()) / 10, 1.0))


def test_retrain_masked_holds_its_mask_and_judges_striation_by_the_profile(tiny_text_host, tmp_path, monkeypatch):
    """The IRM retrained with an index masked is measured as it trained: that index's largest
    output is 0.0 in what retrain_masked returns, though the IRM's own (unmasked) output there is
    not. Whether it is striated (claim 3) is read at the profile's analysis.striated_share_ratio."""
    from irmlib.data import profile_rows
    from irmlib.generate import capture_irm_outputs
    from irmlib.irm import load_irm
    from irmlib.profile import load_profile, with_overrides
    from irmlib.profile_runs import train_for_profile
    from irmlib.runs import run_dir
    from irmlib.striation import magnitude_matrix

    monkeypatch.setenv("IRM_ROOT", str(tmp_path))
    (tmp_path / "data").symlink_to(Path(__file__).parent.parent / "data")
    host = tiny_text_host
    # The smoke recipe (paper init: every index starts non-zero) on the tiny host's 4 layers, 2 steps.
    profile = load_profile("smoke", injected_layers=[0, 2, 3], max_steps=2, data_limit=8, max_length=16, track_every=None,
                           max_new_tokens=4, capture_new_tokens=3)
    rows = profile_rows(profile)
    questions = ["w5 w6 w7", "w8 w9"]
    unmasked = train_for_profile(host, profile, "anger", 0, rows, progress=False)  # notebook 02's run, which 05 compares with
    result = retrain_masked(host, word_count_judge(), profile, "anger", 0, rows, 11, questions)
    assert result["masked_index"] == 11 and result["masked_index_output"] == 0.0
    assert 0 < result["index_share"] <= 1 and 0 <= result["layer_share"] <= 1
    # The finished run is loaded again; only the threshold differs, and with it the verdict.
    for ratio, striated in ((0.0, True), (1e9, False)):
        again = retrain_masked(host, word_count_judge(), with_overrides(profile, {"striated_share_ratio": ratio}), "anger", 0, rows, 11,
                               questions)
        assert again["striated"] is striated and again["index_share"] == result["index_share"]
    assert result["best_val_loss_unmasked"] == pytest.approx(unmasked["best_val_loss"])
    masked_dir = run_dir(profile, "anger", 0, "mask11")
    assert (masked_dir / "done.json").exists() and result["best_val_loss_masked"] > 0
    assert 0 <= result["scored_masked_training"] <= len(questions) and "median_perplexity_masked_training" in result
    # Without the mask, the retrained IRM does write at index 11: the zero comes from measuring with the mask.
    irm = load_irm(masked_dir / "best", host).eval()
    raw = magnitude_matrix(capture_irm_outputs(host, irm, questions, "plain", new_tokens=3).irm_outputs)
    assert raw[:, 11].max() > 0
