"""Scoring (irmlib.scoring): repetition, intervals, text quality, and perplexity in both prompt
formats (the embedded host's chat template, and plain text on a tiny host)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from irmlib.gate import GateRules
from irmlib.scoring import change_verdict, distinct_n, mean_ci, paired_scored, perplexity, target_change, text_quality


def test_distinct_2_counts_repeated_word_pairs():
    assert distinct_n("the cat sat on the mat") == 1.0
    assert distinct_n("silicon silicon silicon silicon silicon") == 0.25
    assert math.isnan(distinct_n("one"))


def test_mean_ci_is_a_t_interval_and_ignores_nan():
    mean, low, high = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert mean == 2.0 and low < 2.0 < high
    assert high - mean == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)
    assert all(math.isnan(v) for v in mean_ci([float("nan")]))


def test_mean_ci_gives_no_interval_on_too_few_values_and_keeps_it_in_bounds():
    mean, low, high = mean_ci([5.0])
    assert mean == 5.0 and math.isnan(low) and math.isnan(high)
    mean, low, high = mean_ci([0.9, 1.0, 0.95], min_n=4)
    assert mean == pytest.approx(0.95) and math.isnan(low) and math.isnan(high)
    unbounded = mean_ci([0.2, 0.99, 1.0])
    assert unbounded[2] > 1.0  # the t-interval of three probabilities runs past 1 ...
    mean, low, high = mean_ci([0.2, 0.99, 1.0], bounds=(0.0, 1.0))
    assert (low, high) == (max(unbounded[1], 0.0), 1.0)  # ... and is cut to the probabilities' range


def test_text_quality_reads_the_gate_labels_of_a_set():
    assert text_quality(["fluent"] * 3) == "fluent"
    assert text_quality(["too_short", "too_short", "fluent"]) == "degenerate: 67% under two words"
    assert text_quality(["degenerate", "fluent", "fluent"]) == "degenerate: 33% degenerate texts"
    # One degenerate text in four is within the default share (0.25); a stricter profile flags it.
    assert text_quality(["degenerate", "fluent", "fluent", "fluent"]) == "fluent"
    assert text_quality(["degenerate", "fluent", "fluent", "fluent"], GateRules(max_degenerate_share=0.2)).startswith("degenerate")
    assert text_quality([]) == "degenerate: no texts"


def test_paired_changes_use_only_prompts_scored_on_both_sides():
    base = pd.DataFrame({"question": ["a", "b", "c"], "p_anger": [0.1, float("nan"), 0.2]})
    irm = pd.DataFrame({"question": ["a", "b", "c"], "p_anger": [0.5, 0.9, float("nan")]})
    assert paired_scored(irm, base, "p_anger") == 1
    change = target_change(irm, base, "anger", min_scored=2)
    assert change["scored"] == 1 and change["verdict"].startswith("not tested") and change["p_target_change"] == pytest.approx(0.4)


def test_change_verdict_needs_the_interval_to_exclude_zero():
    assert change_verdict(0.01, 0.2) == "raised" and change_verdict(-0.3, -0.1) == "lowered"
    assert change_verdict(-0.05, 0.04) == "did not clearly change"
    assert change_verdict(0.01, 0.2, scored=3, min_scored=4).startswith("not tested")
    assert change_verdict(0.01, 0.2, scored=4, min_scored=4) == "raised"


@pytest.mark.slow
def test_perplexity_prefers_the_right_answer(embedded_host):
    good, bad = perplexity(embedded_host, ["What is the capital of France?"] * 2,
                           ["The capital of France is Paris.", "Banana seventeen purple under Paris the."], prompt_format="chat")
    assert 1.0 < good < bad
    assert np.isnan(perplexity(embedded_host, ["Hi?"], [""], prompt_format="chat")[0])


def test_plain_perplexity_scores_only_the_completion_after_question_and_space(tiny_text_host):
    """The plain format (question + " " + completion, as the paper trained): the completion's
    tokens alone are scored, each given every token before it, padding ignored."""
    host = tiny_text_host
    with torch.no_grad():
        logits = host.model(torch.tensor([[5, 6, 7, 8, 9]])).logits[0]
    expected = math.exp(F.cross_entropy(logits[1:4], torch.tensor([7, 8, 9])).item())  # "w7 w8 w9" after "w5 w6 "
    scores = perplexity(host, ["w5 w6", "w10", "w11"], ["w7 w8 w9", "w12", ""], prompt_format="plain")
    assert scores[0] == pytest.approx(expected, rel=1e-5)
    alone = perplexity(host, ["w10"], ["w12"], prompt_format="plain")[0]  # the short row was padded in the batch above
    assert scores[1] == pytest.approx(alone, rel=1e-5)
    with torch.no_grad():
        short = host.model(torch.tensor([[10, 12]])).logits[0]
    assert alone == pytest.approx(math.exp(F.cross_entropy(short[:1], torch.tensor([12])).item()), rel=1e-5)
    assert np.isnan(scores[2])
