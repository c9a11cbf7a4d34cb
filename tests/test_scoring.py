"""Scoring (irmlib.scoring): repetition, intervals, text quality, and perplexity in both prompt
formats (the embedded host's chat template, and plain text on a tiny host)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from irmlib.scoring import change_verdict, distinct_n, mean_ci, perplexity, text_quality


def test_distinct_2_counts_repeated_word_pairs():
    assert distinct_n("the cat sat on the mat") == 1.0
    assert distinct_n("silicon silicon silicon silicon silicon") == 0.25
    assert math.isnan(distinct_n("one"))


def test_mean_ci_is_a_t_interval_and_ignores_nan():
    mean, low, high = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert mean == 2.0 and low < 2.0 < high
    assert high - mean == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)
    assert mean_ci([5.0]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in mean_ci([float("nan")]))


def test_text_quality_flags_empty_repetitive_and_unreadable_generations():
    base = [distinct_n("The sky is blue because air scatters short wavelengths."), distinct_n("Paris is the capital of France.")]
    base_perplexity = [3.0, 5.0]
    fluent = [distinct_n("It is blue, as air scatters blue light."), distinct_n("France's capital is Paris.")]
    assert text_quality(fluent, base, [6.0, 8.0], base_perplexity) == "fluent"
    short = [distinct_n("999,,,,,,,,"), distinct_n(""), distinct_n("Paris.")]
    assert text_quality(short, base, [50.0, float("nan"), 9.0], base_perplexity) == "degenerate: 100% under two words"
    repetitive = text_quality([distinct_n("the of the of the of the of"), distinct_n("yes yes yes yes")], base, [2.0, 2.0], base_perplexity)
    assert repetitive == "degenerate: repetitive (distinct-2 0.31 vs base 1.00)"
    # Varied words at 100x the base's perplexity read as nothing, however distinct.
    assert text_quality(fluent, base, [300.0, 500.0], base_perplexity) == "degenerate: perplexity x100 the base's"
    # One repetitive generation among fluent ones is not a degenerate IRM.
    mixed = [distinct_n("the of the of the of the of"), distinct_n("Paris is the capital of France.")]
    assert text_quality(mixed, base, [4.0, 4.0], base_perplexity) == "fluent"


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
