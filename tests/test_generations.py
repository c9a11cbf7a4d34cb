"""Notebook 03's study (irmlib.studies.generations): the per-emotion summary of scored generations,
the side-by-side table, and the alpha sweep on the embedded host."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from irmlib.claims import HELD, NOT_HELD, NOT_TESTED
from irmlib.profile import load_profile
from irmlib.profile_runs import flags_of_runs
from irmlib.studies.generations import alignment_summary, alpha_sweep, claims, recipe_summary, side_by_side, tone_irms


def test_alignment_summary_compares_base_and_irm_per_emotion():
    scored = pd.DataFrame({
        "model": ["base", "base", "anger-seed0", "anger-seed0", "anger-seed1", "anger-seed1"],
        "mode": ["greedy"] * 6,
        "question": ["q1", "q2"] * 3,
        "p_anger": [0.1, 0.2, 0.8, 0.9, 0.7, 0.6],
        "perplexity": [5.0, 7.0, 20.0, 30.0, 25.0, 25.0],
        "distinct_2": [1.0] * 6,
        "gate": ["fluent"] * 6,
        "too_short": [False] * 6,
    })
    row = alignment_summary(scored, ("anger",), min_scored=4).iloc[0]
    assert row.p_target_base == pytest.approx(0.15) and row.p_target_irm == pytest.approx(0.75)
    assert row.median_perplexity_base == pytest.approx(6.0) and row.median_perplexity_irm == pytest.approx(25.0) and row.n_irm == 4
    assert row.perplexity_ratio == pytest.approx(25.0 / 6.0)  # a ratio of medians, not a median of ratios (3.9)
    # Paired per prompt: q1 0.8 - 0.1, 0.7 - 0.1; q2 0.9 - 0.2, 0.6 - 0.2.
    assert row.p_target_change == pytest.approx(0.6) and row.verdict == "raised" and row.text == "fluent"
    assert row.scored == 4 and row.too_short_irm == 0.0
    # Each seed alone has 2 scored texts, under the 4 a verdict needs.
    assert row.verdict_per_seed == "seed 0: not tested (2 scored texts, 4 needed); seed 1: not tested (2 scored texts, 4 needed)"
    # The same rows with one more scored text required: no verdict.
    assert alignment_summary(scored, ("anger",), min_scored=5).iloc[0].verdict.startswith("not tested")
    # With 2 texts enough, seed 0 (+0.7, +0.7) raised it and seed 1 (+0.5, +0.4) did not clearly.
    per_seed = alignment_summary(scored, ("anger",), min_scored=2).iloc[0]
    assert per_seed.verdict_per_seed == "seed 0: raised; seed 1: did not clearly change" and not per_seed.seeds_agree


def test_each_recipe_is_summarised_on_its_own_runs():
    scored = pd.DataFrame({
        "model": ["base", "base", "anger-seed0", "anger-seed0", "anger-seed0-armB", "anger-seed0-armB"],
        "mode": ["greedy"] * 6, "question": ["q1", "q2"] * 3, "p_anger": [0.1, 0.2, 0.15, 0.2, 0.8, 0.9],
        "perplexity": [5.0] * 6, "distinct_2": [1.0] * 6, "gate": ["fluent"] * 4 + ["fluent"] * 2, "too_short": [False] * 6,
    })
    profile = load_profile("smoke", emotions=["anger"])
    summary = recipe_summary(scored, profile, min_scored=2).set_index("recipe")
    # 02's runs and arm B's (the tone arm) read apart, each against the same base texts.
    assert summary.loc["profile", "p_target_irm"] == pytest.approx(0.175) and summary.loc["profile", "n_irm"] == 2
    assert summary.loc["arm B", "p_target_irm"] == pytest.approx(0.85) and summary.loc["arm B", "verdict"] == "raised"
    verdicts = {claim.number: claim.verdict for claim in claims(summary.reset_index())}
    assert verdicts["1, profile anger"] == NOT_HELD and verdicts["1, arm B anger"] == HELD
    assert list(recipe_summary(scored, load_profile("smoke", emotions=["anger"], tone_arm=None), 2).recipe) == ["profile"]
    # The tone arm's run flagged unstable: its raise is no evidence, so the claim is not tested.
    flagged = recipe_summary(scored, profile, 2, flags={"anger-seed0": "ok", "anger-seed0-armB": "unstable"}).set_index("recipe")
    assert flagged.loc["arm B", "flagged_runs"] == "anger-seed0-armB: unstable" and flagged.loc["profile", "flagged_runs"] == "ok"
    flagged_claims = {claim.number: claim for claim in claims(flagged.reset_index())}
    assert flagged_claims["1, arm B anger"].verdict == NOT_TESTED
    assert "not evidence: anger-seed0-armB: unstable" in flagged_claims["1, arm B anger"].evidence


def test_the_tone_arm_trains_the_runs_notebook_06_reads(embedded_host, smoke_root):
    from irmlib.data import profile_rows
    from irmlib.runs import run_dir

    profile = load_profile("smoke")
    irms = tone_irms(embedded_host, profile, profile_rows(profile))
    assert list(irms) == [f"{e}-seed0-armB" for e in profile.emotions]
    assert all((run_dir(profile, e, 0, "armB") / "done.json").exists() for e in profile.emotions)
    flags = flags_of_runs(profile, ["base", *irms])  # read from the runs' files; "base" is no run
    assert list(flags) == list(irms) and all(isinstance(flag, str) and flag for flag in flags.values())
    with pytest.raises(ValueError, match="prompt format"):
        tone_irms(embedded_host, load_profile("smoke", tone_arm="F"), [])


def test_side_by_side_cuts_long_texts_and_keeps_the_column_order():
    frame = pd.DataFrame({"question": ["q1", "q1", "q2", "q2"], "model": ["base", "anger-seed0"] * 2,
                          "text": ["short", "a\nvery   long text " * 10, "b", "c"]})
    table = side_by_side(frame, "question", "model", width=20)
    assert table.columns.tolist() == ["base", "anger-seed0"] and table.index.tolist() == ["q1", "q2"]
    assert table.loc["q1", "anger-seed0"] == "a very long text a …" and len(table.loc["q1", "anger-seed0"]) == 20
    assert table.loc["q1", "base"] == "short"
    assert side_by_side(frame, "question", "model", order=["anger-seed0"]).columns.tolist() == ["anger-seed0"]


@pytest.mark.slow
def test_alpha_sweep_has_a_row_per_emotion_alpha_and_question_and_alpha_0_is_the_base_host(embedded_host, judge):
    from irmlib.generate import generate
    from irmlib.irm import IRM, IRMConfig

    torch.manual_seed(0)
    loud = IRM(IRMConfig.for_host(embedded_host, injected_layers=(0, 15), init="torch")).eval()
    with torch.no_grad():
        loud.mlp[-1].bias.normal_(0.0, 5.0)  # outputs large enough to change the text at alpha 1
    silent = IRM(IRMConfig.for_host(embedded_host, injected_layers=(0, 15), init="zero")).eval()  # never changes it
    questions = ["What is the capital of France?", "Name a colour."]
    sweep = alpha_sweep(embedded_host, judge, {"anger": loud, "sadness": silent}, questions, (0.0, 1.0), "plain", 6)
    assert len(sweep) == 2 * 2 * 2
    assert sorted(zip(sweep.emotion, sweep.alpha, sweep.question)) == sorted(
        (e, a, q) for e in ("anger", "sadness") for a in (0.0, 1.0) for q in questions)
    for emotion in ("anger", "sadness"):
        rows = sweep[sweep.emotion == emotion]
        assert rows.p_target.equals(rows[f"p_{emotion}"]), "p_target is the swept emotion's probability"
    assert {"perplexity", "distinct_2", "too_short", "text"} <= set(sweep.columns)
    base = {g.question: g.text for g in generate(embedded_host, questions, prompt_format="plain", max_new_tokens=6)}

    def at(emotion, alpha):
        rows = sweep[(sweep.emotion == emotion) & (sweep.alpha == alpha)]
        return dict(zip(rows.question, rows.text))

    assert at("anger", 0.0) == base and at("sadness", 0.0) == base, "alpha 0 is the base host"
    assert at("sadness", 1.0) == base
    assert at("anger", 1.0) != base, "at alpha 1 the IRM acts"
    # Perplexity is under the base host: the same text after the same question scores the same at every alpha.
    assert (sweep.groupby(["question", "text"]).perplexity.nunique(dropna=False) == 1).all()
