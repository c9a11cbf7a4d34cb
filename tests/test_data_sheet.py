"""Notebook 01's data sheet (irmlib.studies.data_sheet): whether the emotion judge reads length
rather than tone, length-matched subsets, and the judge's and the gate's measures on labelled
texts (an unscored text counts wrong)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from irmlib.studies.data_sheet import gate_eval, judge_eval, judge_length_check, length_matched


class _RuleJudge:
    """A judge that calls a text anger when `rule(text)` holds, neutral otherwise."""

    labels = ["anger", "neutral"]

    def __init__(self, rule):
        self.rule = rule

    def probabilities(self, texts):
        """NaN for a text of one word, as the gate keeps too-short texts from the judge."""
        anger = np.array([1.0 if self.rule(t) else 0.0 for t in texts])
        table = pd.DataFrame({"anger": anger, "neutral": 1 - anger})
        table.loc[[len(t.split()) < 2 for t in texts]] = np.nan
        return table

    def gate(self, texts, host=None):
        return ["too_short" if len(t.split()) < 2 else "degenerate" if "," in t else "fluent" for t in texts]


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


def test_an_unscored_text_counts_wrong_in_every_accuracy():
    texts = ["furious"] * 10 + ["calm day"] * 10  # ten angry texts too short to score
    labels = ["anger"] * 10 + ["neutral"] * 10
    check = judge_length_check(_RuleJudge(lambda t: "furious" in t), texts, labels)
    assert check["accuracy"] == 0.5
    measure = judge_eval(_RuleJudge(lambda t: "furious" in t), [{"text": t, "label": l} for t, l in zip(texts, labels)])
    assert measure["accuracy"] == 0.5 and measure["recall"] == {"anger": 0.0, "neutral": 1.0} and measure["unscored"] == 10
    assert measure["confusion"]["anger"] == {"unscored": 10}
    low, high = measure["accuracy_interval"]
    assert low < 0.5 < high and 0.0 <= low and high <= 1.0


def test_gate_eval_counts_degenerate_as_the_positive_class():
    rows = [{"text": "a, b", "label": "degenerate"}, {"text": "c, d", "label": "fluent"}, {"text": "e f", "label": "degenerate"},
            {"text": "g", "label": "too_short"}]
    tone = [{"text": "x, y", "label": "anger"}, {"text": "calm words", "label": "neutral"}]
    measure = gate_eval(_RuleJudge(lambda t: False), rows, tone)
    assert measure["precision"] == 0.5 and measure["recall"] == 0.5 and measure["label_accuracy"] == 0.5
    assert [w["text"] for w in measure["wrong"]] == ["c, d", "e f"]
    assert measure["tone_false_degenerate"] == 0.5 and measure["tone_not_fluent"] == ["x, y"]
    assert measure["perplexity_host"] is None  # no host given: the gate used no perplexity


def test_judge_length_check_scores_at_most_its_limit():
    texts, labels = _tone_and_length_texts()
    calls = []
    judge = _RuleJudge(lambda t: "furious" in t)
    scored = judge.probabilities
    judge.probabilities = lambda batch: calls.append(len(batch)) or scored(batch)
    check = judge_length_check(judge, texts, labels, limit=100)
    assert calls == [100] and check["texts"] == 100 and check["accuracy"] == 1.0
