"""Notebook 01's data sheet (irmlib.studies.data_sheet): whether the emotion judge reads length
rather than tone, and length-matched subsets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from irmlib.studies.data_sheet import judge_length_check, length_matched


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
